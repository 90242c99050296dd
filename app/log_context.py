"""Binds the session a request is about to its log lines (engine/logs.py), uvicorn's access line included.

A REST path names its session (`/v1/sessions/{id}/...`); the session's protocol is looked up when the request starts
(a DELETE forgets the session before the access line is written). A request that creates a session is bound by the
engine itself when it creates it. Pure ASGI, so the binding is in the task uvicorn writes its access line from.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from engine import logs

# A path that names a session (also what app/cluster_headers.py marks for the load balancer).
SESSION_PATH = re.compile(r"^/v1/sessions/([0-9a-f]{32})(?:/|$)")


class SessionLogContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = SESSION_PATH.match(scope.get("path", ""))
            if found:
                engine = getattr(scope["app"].state, "engine", None)
                session = engine.sessions.get(found[1]) if engine is not None else None
                logs.bind(found[1], session.protocol if session is not None else None)
        await self.app(scope, receive, send)
