"""The load generator: N simulated live clients, each streaming its own audio over the real HTTP API.

Each client sends 100 ms frames on a wall clock, never faster than real time, while it holds an SSE subscription
(with `progress=true`, so strides that yield no tokens are timed too). Clients start staggered over one stride
period, so their strides don't line up artificially.

What is measured, per stream:
- **partial latency** of stride k: from the moment the client starts sending the append that carries the stride's
  last sample to the arrival of the first event whose `samples_processed` covers it. It includes the append's own
  HTTP time, as a user would see it.
- **final latency**: from the close request to the `final` event.
- **append latency**: each audio POST's round trip.
- **keeping up**: how many strides behind the processed audio fell. A stream keeps up if each stride was processed
  before the client finished sending the stride after it (at most one stride behind).
- errors, and the final tokens (compared with the in-process reference by the caller).
- for 2pass sessions (benchmarks.twopass): each `sentence` event with its arrival time, and when each append was
  sent (its first sample and the moment), so a sentence can be timed from the append carrying any sample.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from app.client import ParastreamClient
from benchmarks.common import subscribed
from engine.units import STRIDE_SAMPLES

FRAME_MS = 100
FRAME = 16_000 * FRAME_MS // 1000


@dataclass
class StreamResult:
    index: int
    samples: int
    partial_ms: list[float] = field(default_factory=list)
    append_ms: list[float] = field(default_factory=list)
    final_ms: float | None = None
    behind_strides: int = 0
    send_lag_ms: float = 0.0  # how far the sender fell behind its real-time schedule (slow appends)
    tokens: list[str] | None = None
    errors: list[str] = field(default_factory=list)
    sends: list[tuple[int, float]] = field(default_factory=list)  # (first sample of the append, when it was sent)
    sentences: list[tuple[float, dict[str, Any]]] = field(default_factory=list)  # (arrival, sentence event data)
    closed_at: float | None = None
    worker: int | None = None  # where the server placed the session (Parastream; baselines answer 0)

    @property
    def keeps_up(self) -> bool:
        return not self.errors and self.tokens is not None and self.behind_strides <= 1


async def _watch(client: ParastreamClient, sid: str, arrivals: list[tuple[float, int]], result: StreamResult) -> None:
    async for event in client.events(sid, progress=True):
        now = time.monotonic()
        if "samples_processed" in event.data:
            arrivals.append((now, int(event.data["samples_processed"])))
        if event.type == "sentence":
            result.sentences.append((now, dict(event.data)))
        elif event.type == "final":
            result.tokens = list(event.data["tokens"])
        elif event.type == "error":
            result.errors.append(f"error event: {event.data}")


async def run_stream(
    client: ParastreamClient, index: int, pcm: np.ndarray, start_delay: float, options: dict[str, Any] | None = None
) -> StreamResult:
    result = StreamResult(index, len(pcm))
    await asyncio.sleep(start_delay)
    try:
        created = await client.create_session(**(options or {}))
        sid = created["id"]
        result.worker = created.get("worker")
    except httpx.HTTPError as exc:
        result.errors.append(f"create: {exc!r}")
        return result
    arrivals: list[tuple[float, int]] = []
    try:  # subscribed before the first audio, so that the first stride's progress event is not missed
        watcher = await subscribed(client, sid, _watch(client, sid, arrivals, result), progress=True)
    except (TimeoutError, httpx.HTTPError) as exc:
        result.errors.append(f"subscribe: {exc!r}")
        return result
    stride_sent: dict[int, float] = {}  # stride index -> when its last sample started on its way
    start = time.monotonic()
    try:
        for i, offset in enumerate(range(0, len(pcm), FRAME)):
            due = start + i * FRAME_MS / 1000
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            else:
                result.send_lag_ms = max(result.send_lag_ms, (now - due) * 1000)
            end = min(offset + FRAME, len(pcm))
            sent_at = time.monotonic()
            for k in range(offset // STRIDE_SAMPLES, end // STRIDE_SAMPLES):  # strides whose last sample is in this frame
                stride_sent[k] = sent_at
            result.sends.append((offset, sent_at))
            await client.append(sid, pcm[offset:end])
            result.append_ms.append((time.monotonic() - sent_at) * 1000)
        closed_at = result.closed_at = time.monotonic()
        await client.close(sid)
        await asyncio.wait_for(watcher, timeout=120)
        if arrivals and result.tokens is not None:
            result.final_ms = (arrivals[-1][0] - closed_at) * 1000
    except (TimeoutError, httpx.HTTPError) as exc:
        result.errors.append(f"stream: {exc!r}")
        watcher.cancel()
    _stride_timings(result, stride_sent, arrivals)
    return result


def _stride_timings(result: StreamResult, stride_sent: dict[int, float], arrivals: list[tuple[float, int]]) -> None:
    """Partial latency per stride and how far behind the processing fell."""
    sent_times = sorted(stride_sent.values())
    j = 0
    for k in sorted(stride_sent):
        boundary = (k + 1) * STRIDE_SAMPLES
        while j < len(arrivals) and arrivals[j][1] < boundary:
            j += 1
        if j == len(arrivals):
            result.errors.append(f"stride {k} was never reported processed")
            break
        done_at = arrivals[j][0]
        result.partial_ms.append((done_at - stride_sent[k]) * 1000)
        # Strides whose last sample was already sent when this one completed: the backlog at that moment.
        sent_by_then = sum(1 for t in sent_times if t <= done_at)
        result.behind_strides = max(result.behind_strides, sent_by_then - (k + 1))


async def run_trial(base_url: str, clips: list[np.ndarray], options: dict[str, Any] | None = None) -> list[StreamResult]:
    """All clients at once, staggered over one stride period; one shared connection pool. `options`: what each
    session is created with."""
    n = len(clips)
    async with ParastreamClient(base_url, timeout=120, max_connections=2 * n + 10) as client:
        return list(
            await asyncio.gather(
                *(run_stream(client, i, clip, start_delay=0.6 * i / n, options=options) for i, clip in enumerate(clips))
            )
        )
