"""HAProxy's agent-check: one line a node sends HAProxy about itself (docs/cluster.md, deploy/haproxy.cfg).

HAProxy connects to `PARASTREAM_CLUSTER_AGENT_PORT` every `agent-inter` and reads one line (its manual,
"agent-check"). This node answers:

- `up ready N%` while it takes sessions: N is its free share, (max_sessions - open) / max_sessions, so HAProxy's
  weighted round robin sends new sessions where there is most room (0% when full: none at all);
- `drain` while it loads its model or drains: no new sessions, but each stuck session's requests still come here;
- `down` once a drain has handed its sessions off: HAProxy sends their requests to the other nodes at once.

`ready` undoes an earlier `drain` (HAProxy keeps an agent's drain until told otherwise); `up` undoes `down`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from engine.cluster.node import NodeState
from engine.service import Engine

log = logging.getLogger(__name__)


def status_line(engine: Engine) -> str:
    cluster = engine.cluster
    state = cluster.state if cluster is not None else NodeState.UP
    if state is NodeState.DOWN:
        return "down\n"
    if state is NodeState.DRAINING or not engine.ready:
        return "drain\n"
    limit = engine.settings.max_sessions
    free = max(0, limit - engine.open_sessions())
    return f"up ready {round(100 * free / limit)}%\n"


async def serve(engine: Engine, host: str, port: int) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(status_line(engine).encode())
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, host, port)
    log.info("HAProxy agent-check on %s:%d", host, port)
    return server
