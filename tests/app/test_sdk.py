"""The SDK (app/sdk/): every kind of source gives the REST transcript of the same audio, typed; sync and async;
sentences in 2pass; every event exactly once, and the audio exactly once, across dropped connections, lost
answers and 429s; 413 splits; real-time pacing with events arriving while audio is still sent; clear errors."""

from __future__ import annotations

import asyncio
import random
import time
import wave
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.client import ParastreamClient, TranscriptEvent
from app.sdk import (
    APIError,
    AsyncClient,
    Client,
    ConnectionFailed,
    Event,
    FinalEvent,
    PartialEvent,
    SentenceEvent,
    load_audio,
)
from app.sdk.audio import open_source
from benchmarks.audio import synth_sentences
from benchmarks.common import free_port
from tests.audio import synth_speechlike
from tests.harness import ServiceProcess
from tests.helpers import collect
from tests.reference_cache import reference_tokens


async def rest_events(base_url: str, pcm: np.ndarray, sample_rate: int = 16000, **options: object) -> list[TranscriptEvent]:
    """The raw events of `pcm` sent through the low-level client (app.client), in 1 s appends: the reference."""
    async with ParastreamClient(base_url) as client:
        session = await client.create_session(sample_rate=sample_rate, **options)
        watcher = asyncio.create_task(collect(client, session["id"]))
        for start in range(0, len(pcm), sample_rate):
            await client.append(session["id"], pcm[start : start + sample_rate])
        await client.close(session["id"])
        return await asyncio.wait_for(watcher, 60)


def assert_same_transcript(events: list[Event], reference: list[TranscriptEvent]) -> None:
    """Typed events equal the REST ones field for field; ids 1..n; the partials add up to the final."""
    assert [(e.id, e.type) for e in events] == [(e.id, e.type) for e in reference]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    final = events[-1]
    assert isinstance(final, FinalEvent) and list(final.tokens) == reference[-1].data["tokens"]
    assert final.text == reference[-1].data["text"] and final.reason == "closed"
    for event, raw in zip(events, reference):
        if isinstance(event, PartialEvent):
            assert (list(event.tokens), event.text, event.samples_processed) == (
                raw.data["tokens"], raw.data["text"], raw.data["samples_processed"])
        if isinstance(event, SentenceEvent):
            assert (event.index, event.text, event.start_ms, event.end_ms) == (
                raw.data["index"], raw.data["text"], raw.data["start_ms"], raw.data["end_ms"])
            assert [list(t) for t in event.timestamps] == raw.data["timestamps"]
    if not any(isinstance(e, SentenceEvent) for e in events):
        assert [t for e in events if isinstance(e, PartialEvent) for t in e.tokens] == list(final.tokens)


def write_wav(path: Path, pcm: np.ndarray, rate: int = 16000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


def odd_frames(pcm: np.ndarray, seed: int) -> Iterator[bytes]:
    """The PCM as bytes frames of random sizes, odd ones included (a sample split across two frames)."""
    data, rng, pos = pcm.astype("<i2").tobytes(), random.Random(seed), 0
    while pos < len(data):
        n = rng.randint(1, 9001)
        yield data[pos : pos + n]
        pos += n


def test_every_kind_of_source_gives_the_rest_transcript(service: ServiceProcess, model_dir: Path, tmp_path: Path) -> None:
    """Every source kind gives the REST session's events, and those are FunASR's own loop's tokens."""
    url = service.base_url
    pcm = synth_speechlike(4.3, seed=21)
    wav = write_wav(tmp_path / "clip.wav", pcm)

    async def array_frames() -> AsyncIterator[np.ndarray]:
        for start in range(0, len(pcm), 3000):
            yield pcm[start : start + 3000]

    async def run() -> None:
        reference = await rest_events(url, pcm)
        assert reference[-1].data["tokens"] == reference_tokens(model_dir, pcm)
        async with AsyncClient(url) as client:
            for source in (pcm, str(wav), wav, pcm.tobytes(), odd_frames(pcm, 1), array_frames(), [pcm[:7000], pcm[7000:]]):
                events = [e async for e in client.transcribe(source)]
                assert_same_transcript(events, reference)

    asyncio.run(run())


def test_sync_client_2pass_sentences_equal_the_rest_ones(twopass_service: ServiceProcess) -> None:
    url = twopass_service.base_url
    pcm = synth_sentences([2.0, 2.5], seed=3)
    reference = asyncio.run(rest_events(url, pcm, mode="2pass", hotwords="个 丁"))
    with Client(url) as client:
        events = list(client.transcribe(pcm, mode="2pass", hotwords="个 丁"))
    assert_same_transcript(events, reference)
    sentences = [e for e in events if isinstance(e, SentenceEvent)]
    assert [s.index for s in sentences] == list(range(len(sentences))) and len(sentences) >= 2
    assert all(s.start_ms < s.end_ms for s in sentences)
    final = events[-1]
    assert isinstance(final, FinalEvent) and final.text == "".join(s.text for s in sentences)


class _CutStream(httpx.AsyncByteStream):
    """An event stream that lets `keep` events through, then dies in the middle of the next one."""

    def __init__(self, inner: httpx.AsyncByteStream, drops: Counter[str], keep: int) -> None:
        self.inner, self.drops, self.keep = inner, drops, keep

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.inner:
            start = 0
            while (at := chunk.find(b"data:", start)) >= 0:
                seen += 1
                if seen > self.keep:
                    yield chunk[: at + 9]  # half an event: it must never surface
                    self.drops["event_stream"] += 1
                    raise httpx.ReadError("connection dropped mid-event")
                start = at + 1
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class Flaky(httpx.AsyncBaseTransport):
    """Breaks things on purpose. Event streams die after two events (in the middle of the third); of each four
    tries to append, one never reaches the service, one is applied but its answer is lost, one gets a made-up
    429 (Retry-After: 0); the first close is applied and its answer lost."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.drops: Counter[str] = Counter()
        self.appends = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/audio"):
            self.appends += 1
            if self.appends % 4 == 1:
                self.drops["append_unsent"] += 1
                raise httpx.ConnectError("connection refused", request=request)
            if self.appends % 4 == 2:
                await self._applied_answer_lost(request, "append_answer_lost")
            if self.appends % 4 == 3:
                self.drops["append_429"] += 1
                body = {"error": {"code": "buffer_full", "message": "made up"}}
                return httpx.Response(429, headers={"Retry-After": "0"}, json=body, request=request)
        if path.endswith("/close") and not self.drops["close_answer_lost"]:
            await self._applied_answer_lost(request, "close_answer_lost")
        response = await self.inner.handle_async_request(request)
        if path.endswith("/events"):
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_CutStream(response.stream, self.drops, keep=2),
                request=request,
                extensions=response.extensions,
            )
        return response

    async def _applied_answer_lost(self, request: httpx.Request, what: str) -> None:
        response = await self.inner.handle_async_request(request)
        await response.aread()
        await response.aclose()
        self.drops[what] += 1
        raise httpx.ReadError("connection dropped before the answer")

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("kind", ["async-online", "sync-2pass"])
def test_dropped_connections_lose_and_repeat_nothing(kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("service" if kind == "async-online" else "twopass_service").base_url
    mode = "online" if kind == "async-online" else "2pass"
    pcm = synth_sentences([2.0, 1.5], seed=5)
    flaky = Flaky()

    async def undisturbed() -> list[Event]:
        async with AsyncClient(url) as client:
            return [e async for e in client.transcribe(pcm, mode=mode)]

    async def disturbed() -> tuple[list[Event], int]:
        async with AsyncClient(url, transport=flaky) as client:
            session = await client.create_session(mode=mode)
            events = [e async for e in client.stream(session, pcm)]
            return events, (await client.session(session.id))["samples_received"]

    reference = asyncio.run(undisturbed())
    if kind == "async-online":
        events, received = asyncio.run(disturbed())
    else:
        with Client(url, transport=flaky) as client:
            session = client.create_session(mode=mode)
            events = list(client.stream(session, pcm))
            received = client.session(session.id)["samples_received"]
    assert events == reference  # every event once, in order, field for field: ids 1..n, the same final text
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert received == len(pcm)  # no audio applied twice
    assert flaky.drops["event_stream"] >= 2 and flaky.drops["append_answer_lost"] >= 2, flaky.drops
    assert flaky.drops["append_unsent"] >= 2 and flaky.drops["append_429"] >= 2 and flaky.drops["close_answer_lost"] == 1


def test_appends_split_over_the_limit_and_repeat_safely(service: ServiceProcess) -> None:
    # Closures see the URL only: a caught exception's traceback, kept in a frame, must not hold the service (a
    # cycle the garbage collector breaks later, in any order, finding its log file still open).
    url = service.base_url
    # Closures see the URL only: an exception's traceback kept in a frame must not hold the service (a cycle
    # that the garbage collector would break later, in any order, with the log file still open).
    pcm = synth_speechlike(5.0, seed=8)  # 160 kB: over the service's 64 kB limit

    async def run() -> None:
        async with AsyncClient(url) as client:
            session = await client.create_session()
            assert await client.append(session.id, pcm, offset=0) == len(pcm)
            assert client.max_append_bytes == 64_000  # learnt from the 413 and kept
            assert await client.append(session.id, pcm[16000:20000], offset=16000) == len(pcm)  # already there
            with pytest.raises(APIError) as gap:
                await client.append(session.id, pcm[:10], offset=len(pcm) + 10)
            assert gap.value.status == 409 and gap.value.code == "offset_gap"
            assert gap.value.details["expected_offset"] == len(pcm)
            await client.close(session.id)
            events = [e async for e in client.events(session.id)]
            assert isinstance(events[-1], FinalEvent) and events[-1].samples_processed == len(pcm)
            # A later subscriber resumes after the id it saw last.
            assert [e async for e in client.events(session.id, last_event_id=events[-3].id)] == events[-2:]

    asyncio.run(run())


def test_realtime_pacing_events_arrive_while_audio_is_sent(service: ServiceProcess) -> None:
    url = service.base_url
    pcm = synth_speechlike(3.0, seed=9)

    async def run() -> tuple[float, list[float]]:
        async with AsyncClient(url) as client:
            started = time.monotonic()
            arrivals = [time.monotonic() - started async for _ in client.transcribe(pcm, realtime=True, speed=2.0)]
            return time.monotonic() - started, arrivals

    elapsed, arrivals = asyncio.run(run())
    assert elapsed >= 1.5  # 3 s of audio at 2x real time
    assert arrivals[0] < elapsed - 0.4  # the first partial came while the audio was still being sent


def test_errors_are_clear_and_an_abandoned_session_is_deleted(service: ServiceProcess) -> None:
    url = service.base_url
    async def run() -> None:
        async with AsyncClient(f"http://127.0.0.1:{free_port()}", max_retries=1) as client:
            with pytest.raises(ConnectionFailed, match="ConnectError"):
                await client.create_session()
        async with AsyncClient(url) as client:
            with pytest.raises(APIError) as refused:
                await client.create_session(mode="2pass")  # this service has no VAD or offline model
            assert refused.value.status == 422 and refused.value.code == "invalid_options"
            with pytest.raises(APIError) as missing:
                [e async for e in client.events("0" * 32)]
            assert missing.value.status == 404 and missing.value.code == "session_not_found"
            opened = await client.create_session()
            with pytest.raises(ValueError):
                await client.append(opened.id, b"\x00\x01\x02", offset=0)
            await client.delete(opened.id)
            await client.delete(opened.id)  # a repeated delete (its first answer lost) is no error
            # Stopping a transcription early deletes its session.
            paths: set[str] = set()

            async def seen(request: httpx.Request) -> None:
                paths.add(request.url.path)

            client.http.event_hooks["request"].append(seen)
            stream = client.transcribe(synth_speechlike(3.0, seed=10), realtime=True)
            assert isinstance(await anext(stream), PartialEvent)
            await stream.aclose()
            (session_id,) = {p.split("/")[3] for p in paths if p.endswith("/audio")}
            for gone in (opened.id, session_id):
                with pytest.raises(APIError) as lookup:
                    await client.session(gone)
                assert lookup.value.status == 404

    asyncio.run(run())


def test_audio_sources_are_mixed_resampled_and_joined(tmp_path: Path) -> None:
    mono = synth_speechlike(1.0, seed=11, sample_rate=8000)
    stereo = np.stack([mono, mono], axis=1).reshape(-1)
    assert len(load_audio(write_wav(tmp_path / "s.wav", stereo, rate=8000, channels=2))) == 16000
    same = write_wav(tmp_path / "m.wav", mono, rate=8000)
    assert np.array_equal(load_audio(same, 8000), mono)  # int16 files round-trip exactly
    assert np.array_equal(np.frombuffer(b"".join(_drain(open_source(same, 8000, 3000))), "<i2"), mono)
    floats = mono.astype(np.float32) / 32768
    assert b"".join(_drain(open_source(floats, 8000, 500))) == mono.tobytes()
    with pytest.raises(ValueError, match="half a sample"):
        _drain(open_source([b"\x00\x01\x02"]))


def _drain(frames: AsyncIterator[bytes]) -> list[bytes]:
    async def run() -> list[bytes]:
        return [frame async for frame in frames]

    return asyncio.run(run())
