"""The FastAPI application. It imports neither torch nor funasr: inference lives in engine processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import auth, errors
from app.body import JsonBodyLimit, LingeringClose
from app.cluster_headers import ClusterHeaders
from app.log_context import SessionLogContext
from app.protocols import funasr_ws, haproxy_agent, openai_audio, openai_realtime
from app.routes import admin, events, health, page, sessions
from engine.service import Engine
from engine.settings import Settings


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. Pass an already started `engine` to start the model before serving (as `parastream serve`
    does, so that a model that cannot load is reported before the port opens); otherwise the lifespan starts one."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng = engine or Engine(settings)
        if not eng.started:
            await eng.start()
        app.state.engine = eng
        agent = None
        if settings.cluster_agent_port:  # HAProxy's agent-check (app/protocols/haproxy_agent.py)
            agent = await haproxy_agent.serve(eng, settings.host, settings.cluster_agent_port)
        try:
            yield
        finally:
            if agent is not None:
                agent.close()
            await eng.stop()

    app = FastAPI(
        title="Parastream",
        version="0.1.0",
        description="Streaming speech-to-text for FunASR's streaming Paraformer. See docs/api.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    # A refused body is read (a bounded amount) before the answer, so the client can read it (app/body.py).
    app.add_middleware(JsonBodyLimit)  # inside LingeringClose: a refused body is still discarded readably
    app.add_middleware(LingeringClose, max_bytes=settings.max_discard_bytes)
    auth.install(app, settings)  # keys, 401s, CORS (docs/operations.md)
    app.add_middleware(SessionLogContext)  # the session a request's path names, on its log lines (engine/logs.py)
    if settings.cluster_redis:  # what HAProxy's stick table learns sessions from (app/cluster_headers.py)
        app.add_middleware(ClusterHeaders, node=settings.cluster_node_name)
    app.include_router(sessions.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.include_router(page.router)
    app.include_router(funasr_ws.router)
    app.include_router(openai_audio.router)
    app.include_router(openai_realtime.router)
    return app
