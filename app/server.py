"""uvicorn's server with a drain step: SIGTERM finishes received audio before connections are closed.

Signal handlers only enqueue. The first SIGTERM or SIGINT schedules `Engine.drain` on the event loop; when it is
done (every session has its `final` or an `error` saying the server is shutting down), uvicorn's own exit path runs,
which also ends sse-starlette's streams. Without this, uvicorn would close the event streams first and subscribers
would never hear how their session ended. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self._loop is None or not self.started:
            super().handle_exit(sig, frame)  # second signal, or not serving yet: exit now
            return
        self._drain = asyncio.run_coroutine_threadsafe(self._drain_then_exit(sig), self._loop)  # only enqueues

    async def _drain_then_exit(self, sig: int) -> None:
        try:
            await self.engine.drain(self.grace_s)
        finally:
            super().handle_exit(sig, None)
