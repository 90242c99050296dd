"""The headers a load balancer routes a cluster's sessions by (deploy/haproxy.cfg, docs/cluster.md).

Every successful answer about a session names it in `X-Parastream-Session`: the create answer (set by the route,
since the id is new) and every 2xx answer on a `/v1/sessions/{id}/...` path (here). HAProxy's stick table stores the header with
the node that answered, so a session's later requests go to that node, and after a takeover to the node that took
it over. `X-Parastream-Node` names the node, for operators and tests. Pure ASGI, so it also marks event streams.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.log_context import SESSION_PATH

SESSION_HEADER = "X-Parastream-Session"
NODE_HEADER = "X-Parastream-Node"


class ClusterHeaders:
    def __init__(self, app: ASGIApp, node: str) -> None:
        self.app = app
        self.node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = SESSION_PATH.match(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[NODE_HEADER] = self.node
                if found and SESSION_HEADER not in headers and message["status"] < 400:
                    # Successes only: a made-up id's 404 must not take a place in the load balancer's table.
                    headers[SESSION_HEADER] = found[1]
            await send(message)

        await self.app(scope, receive, send_with_headers)
