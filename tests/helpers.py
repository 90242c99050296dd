"""Async helpers the end-to-end tests share: collect a session's events, stream a clip in pieces, wait for a
condition, read a session or a metric. (Starting the service: tests/harness.py.)"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np

from app.client import ParastreamClient, TranscriptEvent
from benchmarks import common

PCM = {"Content-Type": "application/octet-stream"}


async def collect(
    client: ParastreamClient, session_id: str, last_event_id: int | None = None, progress: bool = False
) -> list[TranscriptEvent]:
    """Every event of the session's stream, up to and including the terminal one."""
    return [event async for event in client.events(session_id, last_event_id, progress=progress)]


async def subscribed(
    client: ParastreamClient, session_id: str, progress: bool = False
) -> asyncio.Task[list[TranscriptEvent]]:
    """A task collecting the session's events, returned once the server has answered the subscription: audio
    appended from then on cannot be processed before it listens, so it misses no live-only `progress` event."""
    return await common.subscribed(client, session_id, collect(client, session_id, progress=progress), progress)


async def stream_in_pieces(
    client: ParastreamClient,
    session_id: str,
    pcm: np.ndarray,
    rng: random.Random,
    *,
    max_piece: int = 16_000,
    jitter_s: float = 0.0,
    speed: float | None = None,
    close: bool = True,
) -> None:
    """Append `pcm` in pieces of 1 to `max_piece` samples drawn from `rng`, so strides straddle appends. After each
    piece sleep either up to `jitter_s` (random, to interleave concurrent sessions) or, with `speed`, the piece's
    duration at `speed` x real time (16 kHz). Then close the session, unless `close` is false."""
    pos = 0
    while pos < len(pcm):
        n = rng.randint(1, max_piece)
        await client.append(session_id, pcm[pos : pos + n])
        pos += n
        await asyncio.sleep(n / 16000 / speed if speed else rng.uniform(0, jitter_s))
    if close:
        await client.close(session_id)


async def until(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition", every: float = 0.02
) -> None:
    """Await `predicate` every `every` s until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


async def session_info(client: ParastreamClient, session_id: str) -> dict[str, Any]:
    """`GET /v1/sessions/{id}`: state, counters, worker, migrations..."""
    return (await client.http.get(f"/v1/sessions/{session_id}")).json()


def assert_clean_log(events: list[TranscriptEvent], expected: list[str]) -> None:
    """Final tokens exact; ids 1..n with no gap or repeat; partials add up to the final (nothing twice)."""
    assert events[-1].type == "final", events[-1]
    assert events[-1].data["tokens"] == expected
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert [t for e in events if e.type == "partial" for t in e.data["tokens"]] == expected


def metric(base_url: str, sample: str) -> float:
    """One sample of the service's `/metrics`, e.g. `parastream_sessions_migrated_total{reason="manual"}`; 0 when
    it was never set."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0
