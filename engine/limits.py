"""The per-session append rate (PARASTREAM_MAX_APPENDS_PER_S) as a token bucket: `rate` appends a second on average,
and up to one second's worth at once, so that a client catching up after a stall (a page that buffered while the
network was away) is not refused for a burst that averages out.

Each protocol decides what to do when the bucket is empty (docs/operations.md, "Limits"): a REST append is refused
with 429 and Retry-After; a WebSocket connection keeps reading and gathers the audio into a larger append, and waits
(reading nothing, so TCP pushes back) only once that append is as large as an append may be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self.clock = clock
        self.tokens = self.burst
        self.at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def wait(self) -> float:
        """Seconds until a token is there (0: one is there now); takes nothing."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def take(self) -> float:
        """Takes a token and answers 0, or takes nothing and answers the seconds until one is there."""
        wait = self.wait()
        if wait == 0:
            self.tokens -= 1
        return wait

    async def admit(self, gathered: int, most: int) -> bool:
        """For a source that gathers its audio (the WebSocket protocols): True when the `gathered` bytes may be
        appended now, a token taken; False: keep gathering. Once `gathered` reaches `most` it waits for a token
        instead (most=0: always wait), reading nothing meanwhile, so TCP slows the client down."""
        wait = self.take()
        if wait and gathered < most:
            return False
        while wait:
            await asyncio.sleep(wait)
            wait = self.take()
        return True
