"""The line HAProxy's agent-check reads (app/protocols/haproxy_agent.py), over a real TCP connection."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from app.protocols import haproxy_agent
from engine.cluster.node import NodeState


def engine(open_sessions: int, ready: bool = True, state: NodeState = NodeState.UP) -> SimpleNamespace:
    return SimpleNamespace(
        cluster=SimpleNamespace(state=state), ready=ready, settings=SimpleNamespace(max_sessions=8),
        open_sessions=lambda: open_sessions,
    )


def test_the_agent_reports_free_share_drain_and_down() -> None:
    async def ask(eng: SimpleNamespace) -> str:
        server = await haproxy_agent.serve(eng, "127.0.0.1", 0)  # type: ignore[arg-type]
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        line = (await reader.read()).decode()
        writer.close()
        server.close()
        return line

    assert asyncio.run(ask(engine(0))) == "up ready 100%\n"
    assert asyncio.run(ask(engine(6))) == "up ready 25%\n"  # weights follow the room left: most room, most sessions
    assert asyncio.run(ask(engine(8))) == "up ready 0%\n"  # full: no new session is sent here
    assert asyncio.run(ask(engine(0, ready=False))) == "drain\n"  # still loading its model
    assert asyncio.run(ask(engine(3, state=NodeState.DRAINING))) == "drain\n"
    assert asyncio.run(ask(engine(0, state=NodeState.DOWN))) == "down\n"
