"""The low-level async client of the HTTP API (httpx + httpx-sse) that the tests and benchmarks drive the service
with: one request per method, raw events (`TranscriptEvent`, with the id-less `progress` events on request), no
retries, so a test sees exactly what the service answers.

Applications want the SDK instead, `app.sdk` (docs/sdk.md): typed events, sync and async clients, files, arrays
and frame iterators as sources, real-time pacing, and resuming after dropped connections. Its main names are
importable from here too.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from httpx_sse import aconnect_sse

from app.sdk import (
    APIError,
    AsyncClient,
    Client,
    ConnectionFailed,
    ErrorEvent,
    Event,
    FinalEvent,
    ParastreamError,
    PartialEvent,
    SentenceEvent,
    Session,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "Client",
    "ConnectionFailed",
    "ErrorEvent",
    "Event",
    "FinalEvent",
    "ParastreamClient",
    "ParastreamError",
    "PartialEvent",
    "SentenceEvent",
    "Session",
    "TranscriptEvent",
    "read_wav",
    "stream_pcm",
]


@dataclass(frozen=True)
class TranscriptEvent:
    id: int
    type: str
    data: dict[str, Any]


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """16-bit mono PCM samples and the sample rate of a WAV file."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: need 16-bit mono PCM")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy(), w.getframerate()


class ParastreamClient:
    def __init__(self, base_url: str, timeout: float = 30.0, max_connections: int = 100) -> None:
        # Each live stream holds one connection for its events and uses another for appends.
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)

    async def __aenter__(self) -> ParastreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def create_session(self, **options: Any) -> dict[str, Any]:
        r = await self.http.post("/v1/sessions", json=options or None)
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        return answer

    async def append(self, session_id: str, pcm: np.ndarray | bytes, offset: int | None = None) -> dict[str, Any]:
        """Append PCM; with `offset` (index of its first sample) the append is safe to retry."""
        body = pcm.astype("<i2").tobytes() if isinstance(pcm, np.ndarray) else pcm
        r = await self.http.post(
            f"/v1/sessions/{session_id}/audio",
            content=body,
            headers={"Content-Type": "application/octet-stream"},
            params={"offset": offset} if offset is not None else None,
        )
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        return answer

    async def close(self, session_id: str) -> dict[str, Any]:
        r = await self.http.post(f"/v1/sessions/{session_id}/close")
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        return answer

    async def events(
        self, session_id: str, last_event_id: int | None = None, progress: bool = False
    ) -> AsyncIterator[TranscriptEvent]:
        """Yield events until the terminal one (final or error). `progress` adds id-less progress events (id 0)."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        params = {"progress": "true"} if progress else None
        async with aconnect_sse(
            self.http, "GET", f"/v1/sessions/{session_id}/events", headers=headers, params=params, timeout=None
        ) as source:
            async for sse in source.aiter_sse():
                if not sse.data:
                    # httpx-sse surfaces a keep-alive comment as an empty "message" once any event had an id.
                    continue
                # An id-less event inherits the last id in SSE; progress events are never resume points.
                event_id = 0 if sse.event == "progress" or not sse.id else int(sse.id)
                event = TranscriptEvent(event_id, sse.event, json.loads(sse.data))
                yield event
                if event.type in ("final", "error"):
                    return


async def stream_pcm(
    client: ParastreamClient, session_id: str, pcm: np.ndarray, sample_rate: int, frame_ms: int = 100, speed: float = 1.0
) -> None:
    """Send `pcm` in `frame_ms` frames on a wall clock (never faster than `speed` x real time), then close."""
    frame = sample_rate * frame_ms // 1000
    start = time.monotonic()
    for i, offset in enumerate(range(0, len(pcm), frame)):
        delay = start + i * frame_ms / 1000 / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await client.append(session_id, pcm[offset : offset + frame])
    await client.close(session_id)
