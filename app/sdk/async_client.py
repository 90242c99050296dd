"""`AsyncClient`: the asyncio SDK of the service's HTTP API (httpx + httpx-sse). docs/sdk.md has the guide.

One call transcribes a source and yields typed events while the audio is still being sent:

    async with AsyncClient("http://127.0.0.1:8000") as client:
        async for event in client.transcribe("speech.wav", realtime=True):
            ...

What it does for the caller:
- sending and receiving run at once: the audio goes up in appends while the events come down an SSE stream;
- every append carries `offset`, so after a dropped connection the same append is sent again safely (the service
  acknowledges samples it already has); 429 (the session's buffer is full) waits `Retry-After` and retries; 413
  splits the audio into pieces the service takes and keeps that size for later appends;
- the event stream reconnects after a drop with `Last-Event-ID`, so the caller sees every event exactly once;
- the audio after the service's `samples_durable` is kept, and sent again when a node of a cluster that took the
  session over asks for it (`409 offset_gap`), then the close is repeated (app/sdk/replay.py, docs/cluster.md);
- `max_retries` transport failures in a row (with a growing pause between) end in `ConnectionFailed`; a refusal
  (a 4xx, or a 5xx that is not 503 with Retry-After) is an `APIError` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from app.sdk.audio import DEFAULT_SAMPLE_RATE, AudioSource, Frame, open_source, pcm_bytes
from app.sdk.errors import APIError, ConnectionFailed, api_error, retry_after
from app.sdk.events import TERMINAL, Event, parse_event
from app.sdk.replay import Kept
from app.sdk.session import Session

DEFAULT_URL = "http://127.0.0.1:8000"
PCM_HEADERS = {"Content-Type": "application/octet-stream"}
# Realtime pacing sends 100 ms frames, as a live microphone delivers them; otherwise 1 s pieces, as fast as taken.
REALTIME_FRAME_MS = 100
BULK_PIECE_MS = 1000


class AsyncClient:
    """The service at `url`. Use as `async with AsyncClient(url) as client:` (or call `aclose()`).

    `timeout`: seconds for a request (connect, write, and reading an answer). `event_timeout`: seconds an event
    stream may stay silent before it counts as dropped and is reopened (the service pings every
    PARASTREAM_SSE_PING_S, 15 s by default). `max_retries`: transport failures in a row before `ConnectionFailed`.
    `busy_timeout`: how long 429/503 answers with Retry-After are waited out before they are raised. `transport`:
    an httpx transport to send through (tests, proxies, mounts)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        event_timeout: float = 60.0,
        max_retries: int = 5,
        retry_backoff_s: float = 0.1,
        busy_timeout: float = 120.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.event_timeout = event_timeout
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.busy_timeout = busy_timeout
        self.max_append_bytes: int | None = None  # learnt from a 413
        self.http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=headers, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------------------------------------ one call each

    async def create_session(
        self,
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        mode: str | None = None,
        hotwords: str | None = None,
        chunk_size: Sequence[int] | None = None,
        encoder_chunk_look_back: int | None = None,
        decoder_chunk_look_back: int | None = None,
    ) -> Session:
        """`POST /v1/sessions`. `mode`: `online`, `2pass` or `offline` (default: the service's). `hotwords`:
        space-separated words the offline model is biased toward. Options left None take the service's default."""
        body: dict[str, Any] = {"sample_rate": sample_rate}
        for key, value in (
            ("mode", mode),
            ("hotwords", hotwords),
            ("chunk_size", list(chunk_size) if chunk_size is not None else None),
            ("encoder_chunk_look_back", encoder_chunk_look_back),
            ("decoder_chunk_look_back", decoder_chunk_look_back),
        ):
            if value is not None:
                body[key] = value
        # Not retried once sent: a lost answer would leave a second session behind (it idles out, but counts).
        return Session.from_info(await self._request("POST", "/v1/sessions", json=body, idempotent=False))

    async def append(self, session_id: str, pcm: Frame, *, offset: int) -> int:
        """Append PCM16 LE mono samples (bytes or an array) starting at sample `offset`; returns the samples the
        session has received in all. Safe to repeat: samples the service already has are not applied twice. Waits
        out 429, splits what is over the service's size limit (413), retries dropped connections."""
        body = pcm_bytes(pcm)
        if len(body) % 2:
            raise ValueError("PCM16 audio has an even number of bytes")
        return int((await self._append(session_id, body, offset))["samples_received"])

    async def _append(self, session_id: str, body: bytes, offset: int) -> dict[str, Any]:
        """`append`, returning the last answer (the received and durable offsets)."""
        answer: dict[str, Any] = {"samples_received": offset, "samples_durable": offset}
        pos = 0
        while pos < len(body):
            size = len(body) - pos if self.max_append_bytes is None else self.max_append_bytes
            piece = body[pos : pos + size]
            try:
                answer = await self._request(
                    "POST",
                    f"/v1/sessions/{session_id}/audio",
                    content=piece,
                    params={"offset": offset + pos // 2},
                    headers=PCM_HEADERS,
                )
            except APIError as exc:
                if exc.status != 413:
                    raise
                limit = int(exc.details.get("limit", 0))
                limit = limit if 2 <= limit < len(piece) else len(piece) // 2
                self.max_append_bytes = max(2, limit - limit % 2)
                continue
            pos += len(piece)
        return answer

    async def close(self, session_id: str, *, offset: int | None = None) -> dict[str, Any]:
        """`POST /v1/sessions/{id}/close`: flush the audio; the event stream then ends with a final event. With
        `offset` (the samples sent), a session that has received less answers 409 `offset_gap` instead."""
        params = {"offset": offset} if offset is not None else None
        answer: dict[str, Any] = await self._request("POST", f"/v1/sessions/{session_id}/close", params=params)
        return answer

    async def delete(self, session_id: str) -> None:
        """`DELETE /v1/sessions/{id}`: abort the session now (subscribers get an `error` event, `aborted`)."""
        try:
            await self._request("DELETE", f"/v1/sessions/{session_id}")
        except APIError as exc:
            if exc.status != 404:  # a retried delete whose first answer was lost
                raise

    async def session(self, session_id: str) -> dict[str, Any]:
        """`GET /v1/sessions/{id}`: state, counters and the transcript so far."""
        answer: dict[str, Any] = await self._request("GET", f"/v1/sessions/{session_id}")
        return answer

    # ------------------------------------------------------------------------------------------ streams

    async def events(
        self,
        session_id: str,
        *,
        last_event_id: int = 0,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """The session's events after `last_event_id`, up to and including the final (or error) one. A dropped or
        silent connection is reopened with `Last-Event-ID`; no event is yielded twice. `on_reconnect` runs after
        each reopening (`stream` repeats its close there: the session may be on another node now)."""
        last = last_event_id
        failures = 0
        opened = False
        busy_until = time.monotonic() + self.busy_timeout
        path = f"/v1/sessions/{session_id}/events"
        timeout = httpx.Timeout(self.http.timeout.connect, read=self.event_timeout)
        while True:
            problem: str
            try:
                headers = {"Last-Event-ID": str(last)} if last else {}
                async with aconnect_sse(self.http, "GET", path, headers=headers, timeout=timeout) as source:
                    response = source.response
                    if response.status_code != 200:
                        await response.aread()
                        wait = retry_after(response)
                        if wait is None or time.monotonic() + wait > busy_until:
                            raise api_error(response)
                        await asyncio.sleep(wait)
                        continue
                    if opened and on_reconnect is not None:
                        await on_reconnect()
                    opened = True
                    async for sse in source.aiter_sse():
                        if not sse.data or sse.event == "progress":
                            continue  # keep-alives surface as empty messages; progress is not asked for
                        if sse.event == "gap":  # id-less (httpx-sse would give it the previous id)
                            event = parse_event(sse.event, 0, json.loads(sse.data))
                        else:
                            event_id = int(sse.id) if sse.id else 0
                            if event_id <= last:
                                continue  # never twice
                            last = event_id
                            failures = 0
                            event = parse_event(sse.event, event_id, json.loads(sse.data))
                        if event is None:
                            continue
                        yield event
                        if event.type in TERMINAL:
                            return
                problem = "the event stream ended before the final event"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            failures += 1
            if failures > self.max_retries:
                raise ConnectionFailed(f"event stream of session {session_id}: {problem} ({failures} tries in a row)")
            await asyncio.sleep(self._backoff(failures))

    async def send(
        self,
        session_id: str,
        source: AudioSource,
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        offset: int = 0,
        realtime: bool = False,
        speed: float = 1.0,
        close: bool = True,
    ) -> int:
        """Send `source` (a path, array, bytes or frames; app/sdk/audio.py) to the session from sample `offset`,
        then close the session unless `close` is false. `realtime`: at `speed` x real time, in 100 ms frames (a
        frame leaves when its audio would have been spoken); otherwise as fast as the service accepts. Returns
        the end offset."""
        frames = self._frames(source, sample_rate, realtime, speed)
        return await self._send(session_id, frames, sample_rate, offset, realtime, speed, close)

    async def stream(
        self,
        session: Session | str,
        source: AudioSource,
        *,
        sample_rate: int | None = None,
        offset: int = 0,
        last_event_id: int = 0,
        realtime: bool = False,
        speed: float = 1.0,
        close: bool = True,
    ) -> AsyncGenerator[Event, None]:
        """Send `source` to an open session and yield its events at the same time, up to the final (or error)
        event. The sample rate is the session's (given `Session`) or `sample_rate` (default 16 kHz)."""
        session_id = session.id if isinstance(session, Session) else session
        rate = sample_rate or (session.sample_rate if isinstance(session, Session) else DEFAULT_SAMPLE_RATE)
        frames = self._frames(source, rate, realtime, speed)
        kept = Kept(offset)
        sender = asyncio.create_task(self._send(session_id, frames, rate, offset, realtime, speed, close, kept))

        async def close_again() -> None:
            # The stream dropped and came back, maybe from the node that took the session over from a replica:
            # if everything was sent and closed, say so again, sending first whatever that node lacks.
            if close and sender.done() and not sender.cancelled() and sender.exception() is None:
                await self._close(session_id, kept)

        events = self.events(session_id, last_event_id=last_event_id, on_reconnect=close_again)
        pending: asyncio.Future[Event] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(anext(events))
                waiting: set[asyncio.Future[Any]] = {pending}
                if not sender.done():
                    waiting.add(sender)
                while not pending.done():
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if sender.done():
                        sender.result()  # raises what stopped the sending
                        waiting.discard(sender)
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield event
                if event.type in TERMINAL:
                    return
        finally:
            for task in (pending, sender):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            await events.aclose()

    async def transcribe(
        self,
        source: AudioSource,
        *,
        sample_rate: int | None = None,
        realtime: bool = False,
        speed: float = 1.0,
        mode: str | None = None,
        hotwords: str | None = None,
        chunk_size: Sequence[int] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Open a session, stream `source` into it and yield its typed events: partials (and sentences in 2pass
        and offline modes) while the audio is sent, then the final event (or an error event). `sample_rate`: of
        an array, bytes or frames (default 16 kHz); a file is resampled to it (default 16 kHz). The session is
        deleted if the caller stops early."""
        rate = sample_rate or DEFAULT_SAMPLE_RATE
        frames = self._frames(source, rate, realtime, speed)  # a missing file fails here, before a session exists
        session = await self.create_session(sample_rate=rate, mode=mode, hotwords=hotwords, chunk_size=chunk_size)
        ended = False
        try:
            async for event in self.stream(session, frames, realtime=realtime, speed=speed):
                ended = event.type in TERMINAL
                yield event
        finally:
            if not ended:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.delete(session.id))

    # ------------------------------------------------------------------------------------------ internals

    def _frames(self, source: AudioSource, sample_rate: int, realtime: bool, speed: float) -> AsyncIterator[bytes]:
        if isinstance(source, _Frames):
            return source
        if sample_rate <= 0:
            raise ValueError("sample_rate must be positive")
        if realtime and not speed > 0:
            raise ValueError("speed must be positive")
        piece_ms = REALTIME_FRAME_MS if realtime else BULK_PIECE_MS
        return _Frames(open_source(source, sample_rate, sample_rate * piece_ms // 1000))

    async def _send(
        self,
        session_id: str,
        frames: AsyncIterator[bytes],
        sample_rate: int,
        offset: int,
        realtime: bool,
        speed: float,
        close: bool,
        kept: Kept | None = None,
    ) -> int:
        kept = kept if kept is not None else Kept(offset)
        started = time.monotonic()
        sent = 0
        async for frame in frames:
            n = len(frame) // 2
            if realtime:
                delay = started + (sent + n) / sample_rate / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            kept.add(frame)
            await self._deliver(session_id, kept, offset + sent, frame)
            sent += n
        if close:
            await self._close(session_id, kept)
        return offset + sent

    async def _deliver(self, session_id: str, kept: Kept, offset: int, body: bytes) -> None:
        """Append `body` at `offset`; if the service asks for audio from further back (its node was lost and another
        carried the session on from a replica), send it everything kept from there. Forgets what is durable."""
        while True:
            try:
                answer = await self._append(session_id, body, offset)
            except APIError as exc:
                again = kept.replay_from(exc, offset + len(body) // 2)
                if again is None:
                    raise
                offset, body = again, kept.since(again)
                continue
            kept.forget_before(int(answer.get("samples_durable", answer["samples_received"])))
            return

    async def _close(self, session_id: str, kept: Kept) -> None:
        """Close with the end offset, sending first whatever the service asks to have again."""
        while True:
            try:
                await self.close(session_id, offset=kept.end)
                return
            except APIError as exc:
                again = kept.replay_from(exc, kept.end)
                if again is None:
                    raise
                await self._deliver(session_id, kept, again, kept.since(again))

    def _backoff(self, failures: int) -> float:
        return float(min(5.0, self.retry_backoff_s * 2 ** (failures - 1)))

    async def _request(self, method: str, path: str, *, idempotent: bool = True, **kwargs: Any) -> Any:
        """One API call with the SDK's retry rules; the decoded JSON answer (None for 204)."""
        failures = 0
        busy_until = time.monotonic() + self.busy_timeout
        while True:
            try:
                response = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                failures += 1
                # A request that may have been applied is repeated only when that is harmless (`idempotent`).
                unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
                if failures > self.max_retries or not (idempotent or unsent):
                    raise ConnectionFailed(f"{method} {self.url}{path}: {type(exc).__name__}: {exc}") from exc
                await asyncio.sleep(self._backoff(failures))
                continue
            if response.is_success:
                return response.json() if response.content else None
            wait = retry_after(response)
            if wait is None or time.monotonic() + wait > busy_until:
                raise api_error(response)
            await asyncio.sleep(wait)


class _Frames(AsyncIterator[bytes]):
    """A source already opened (so `transcribe` can open it before creating the session)."""

    def __init__(self, frames: AsyncIterator[bytes]) -> None:
        self._frames = frames

    def __aiter__(self) -> _Frames:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._frames)
