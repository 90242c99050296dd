"""uvicorn's server with a drain step: SIGTERM finishes received audio before connections are closed.

Signal handlers only enqueue. The first SIGTERM or SIGINT schedules `Engine.drain` on the event loop; when it is
done (every session has its `final` or an `error` saying the server is shutting down), uvicorn's own exit path runs,
which also ends sse-starlette's streams. Without this, uvicorn would close the event streams first and subscribers
would never hear how their session ended. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import socket
from types import FrameType

import uvicorn

from engine.service import Engine


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: Engine, grace_s: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.grace_s = grace_s
        self._drain: concurrent.futures.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self._loop is None or not self.started:
            super().handle_exit(sig, frame)  # second signal, or not serving yet: exit now
            return
        self._drain = asyncio.run_coroutine_threadsafe(self._drain_then_exit(sig), self._loop)  # only enqueues

    def request_drain(self) -> bool:
        """`POST /v1/admin/drain`: the same drain as SIGTERM, then exit; False if one is already under way."""
        if self._drain is not None:
            return False
        self.handle_exit(signal.SIGTERM, None)
        return True

    async def _drain_then_exit(self, sig: int) -> None:
        try:
            await self.engine.drain(self.grace_s)
        finally:
            super().handle_exit(sig, None)



def listening_socket(host: str, port: int, send_buffer_bytes: int) -> socket.socket | None:
    """A listening socket whose connections get `SO_SNDBUF = send_buffer_bytes`, or None (0: uvicorn binds its own
    and the kernel autotunes). Linux copies a listener's buffer size, and turns autotuning off, on every connection it
    accepts; uvicorn has no option for it.

    The socket says it is TCP (`IPPROTO_TCP`, not uvicorn's 0): asyncio turns Nagle's algorithm off only on sockets
    whose protocol is TCP, accepted ones inherit the listener's, and with Nagle on every small SSE event waits for a
    delayed ACK (measured: a stride's cost through the service went from 8 ms to 28 ms)."""
    if not send_buffer_bytes:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    sock.bind((host, port))
    return sock
