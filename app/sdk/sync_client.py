"""`Client`: the blocking SDK, for scripts and threads without asyncio.

It runs an `AsyncClient` on an event loop in a background thread of its own and hands results across, so the
behaviour (concurrent sending and receiving, retries, resume) is the async client's, call for call:

    with Client("http://127.0.0.1:8000") as client:
        for event in client.transcribe("speech.wav"):
            ...

Sources are read on that thread: a blocking iterable (a microphone, stdin) is read in a worker thread there, so
it never stalls the event stream. Give it plain iterables, not async ones bound to another event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import httpx

from app.sdk.async_client import DEFAULT_URL, AsyncClient
from app.sdk.audio import DEFAULT_SAMPLE_RATE, AudioSource, Frame
from app.sdk.events import Event
from app.sdk.session import Session

T = TypeVar("T")


class Client:
    """The service at `url`; the same options as `AsyncClient`. Use as `with Client(url) as client:` (or call
    `close_client()`), which stops its thread."""

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
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="parastream-sdk", daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(
                url,
                timeout=timeout,
                event_timeout=event_timeout,
                max_retries=max_retries,
                retry_backoff_s=retry_backoff_s,
                busy_timeout=busy_timeout,
                headers=headers,
                transport=transport,
            )

        self.aio = self._run(make())  # the AsyncClient underneath; use it only on this client's loop

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_client()

    def close_client(self) -> None:
        """Close the connections and stop the background thread."""
        if self._loop.is_closed():
            return
        try:
            self._run(self.aio.aclose())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    # The same calls as AsyncClient's; see their docstrings there.

    def create_session(
        self,
        *,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        mode: str | None = None,
        hotwords: str | None = None,
        chunk_size: Sequence[int] | None = None,
        encoder_chunk_look_back: int | None = None,
        decoder_chunk_look_back: int | None = None,
    ) -> Session:
        return self._run(
            self.aio.create_session(
                sample_rate=sample_rate,
                mode=mode,
                hotwords=hotwords,
                chunk_size=chunk_size,
                encoder_chunk_look_back=encoder_chunk_look_back,
                decoder_chunk_look_back=decoder_chunk_look_back,
            )
        )

    def append(self, session_id: str, pcm: Frame, *, offset: int) -> int:
        return self._run(self.aio.append(session_id, pcm, offset=offset))

    def close(self, session_id: str) -> dict[str, Any]:
        """Close the session (not the client: that is `close_client()`)."""
        return self._run(self.aio.close(session_id))

    def delete(self, session_id: str) -> None:
        self._run(self.aio.delete(session_id))

    def session(self, session_id: str) -> dict[str, Any]:
        return self._run(self.aio.session(session_id))

    def events(self, session_id: str, *, last_event_id: int = 0) -> Iterator[Event]:
        return self._iterate(self.aio.events(session_id, last_event_id=last_event_id))

    def send(
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
        return self._run(
            self.aio.send(
                session_id, source, sample_rate=sample_rate, offset=offset, realtime=realtime, speed=speed, close=close
            )
        )

    def stream(
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
    ) -> Iterator[Event]:
        return self._iterate(
            self.aio.stream(
                session,
                source,
                sample_rate=sample_rate,
                offset=offset,
                last_event_id=last_event_id,
                realtime=realtime,
                speed=speed,
                close=close,
            )
        )

    def transcribe(
        self,
        source: AudioSource,
        *,
        sample_rate: int | None = None,
        realtime: bool = False,
        speed: float = 1.0,
        mode: str | None = None,
        hotwords: str | None = None,
        chunk_size: Sequence[int] | None = None,
    ) -> Iterator[Event]:
        return self._iterate(
            self.aio.transcribe(
                source,
                sample_rate=sample_rate,
                realtime=realtime,
                speed=speed,
                mode=mode,
                hotwords=hotwords,
                chunk_size=chunk_size,
            )
        )

    # ------------------------------------------------------------------------------------------ the bridge

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the client's loop and wait for it; an interrupt here cancels it there."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            concurrent.futures.wait([future], timeout=10)
            raise

    def _iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(agen)
            except StopAsyncIteration:
                return False, None

        async def finish() -> None:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield cast(T, item)
        finally:
            if not self._loop.is_closed():
                self._run(finish())
