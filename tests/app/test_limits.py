"""The limits (docs/operations.md, "Limits"), each met on a service with small ones: the answer past each (429 with
Retry-After and a code, or a WebSocket close with a code and a reason), a session's maximum duration (finalised,
then refused), WebSocket message sizes (1009), appends past the rate on the WebSockets (gathered, not refused), and
the readable 413 (a client still sending a refused body reads the answer, not a connection reset). The pieces with
no service (the token bucket, the lingering close's bounds, the engine's counting) are checked in-process first."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets
from starlette.types import Message

from app.body import LingeringClose
from app.client import ParastreamClient, TranscriptEvent
from engine.errors import RateLimited, SessionNotOpen, TooManySessions
from engine.limits import TokenBucket
from engine.messages import CloseSession, StreamOptions
from engine.service import Engine
from engine.settings import Settings
from tests.audio import synth_speechlike
from tests.engine.test_migration import FakeSupervisor
from tests.harness import CLEAN_EXIT, ServiceProcess, segments_of
from tests.helpers import collect

APPENDS_PER_S = 5
MAX_SESSION_S = 4
WS_MESSAGE_BYTES = 65_536
APPEND_BYTES = 64_000
PER_KEY = 4  # the most sessions one test holds at once with KEY, at least
KEY, OTHER_KEY = "k1", "k2"  # KEY for every test; OTHER_KEY only where its sessions are counted
AUTH = {"Authorization": f"Bearer {KEY}"}
BIG = 64 << 20  # the body a client sends by mistake: a 64 MiB file


# --- in-process: the pieces -------------------------------------------------------------------------------------


def test_token_bucket_takes_a_seconds_worth_at_once_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(5, clock=lambda: now[0])
    assert [bucket.take() for _ in range(5)] == [0.0] * 5
    assert bucket.take() == pytest.approx(0.2) and bucket.wait() == pytest.approx(0.2)  # nothing taken
    now[0] += 0.1
    assert bucket.take() == pytest.approx(0.1)
    now[0] += 0.1
    assert bucket.take() == 0.0 and bucket.take() > 0
    now[0] += 60  # idle: the burst is back, never more
    assert [bucket.take() for _ in range(6)].count(0.0) == 5


@pytest.fixture
def engine() -> Iterator[Engine]:
    settings = Settings(
        _env_file=None, max_sessions=4, max_sessions_per_key=2, max_appends_per_s=2, max_session_s=10
    )
    eng = Engine(settings, supervisor=FakeSupervisor(1))  # type: ignore[arg-type]
    eng.accepting = True
    yield eng
    for session in eng.sessions.values():
        if session.ring is not None:
            session.ring.unlink()


def test_engine_counts_sessions_per_owner_and_appends_per_session(engine: Engine) -> None:
    mine = [engine.create_session(16000, StreamOptions(), owner="key_a") for _ in range(2)]
    with pytest.raises(TooManySessions) as refused:
        engine.create_session(16000, StreamOptions(), owner="key_a")
    assert refused.value.retry_after_s and "PARASTREAM_MAX_SESSIONS_PER_KEY" in refused.value.message
    engine.create_session(16000, StreamOptions(), owner="key_b")  # each key its own count
    engine.create_session(16000, StreamOptions())  # no keys: only PARASTREAM_MAX_SESSIONS applies
    engine.abort(mine[0].id)
    engine.create_session(16000, StreamOptions(), owner="key_a")  # an ended session no longer counts

    session = mine[1]
    engine.admit_append(session)
    engine.admit_append(session)
    with pytest.raises(RateLimited) as limited:
        engine.admit_append(session)
    assert 0 < (limited.value.retry_after_s or 0) <= 0.5 and limited.value.details["limit"] == 2


def test_reaper_closes_a_session_at_its_maximum_duration(engine: Engine) -> None:
    session = engine.create_session(16000, StreamOptions())
    engine.append(session.id, np.zeros(1600, "<i2").tobytes())
    engine.supervisor.take()  # type: ignore[attr-defined]
    engine._reap(session.created_at + 9)
    assert session.state.value == "open"
    engine._reap(session.created_at + 10.5)  # audio came just now: not idle, but too old
    sent = [msg for _, msg in engine.supervisor.take()]  # type: ignore[attr-defined]
    assert [type(m) for m in sent] == [CloseSession] and sent[0].reason == "max_duration"  # type: ignore[attr-defined]
    with pytest.raises(SessionNotOpen) as refused:
        engine.append(session.id, b"\0\0")
    assert refused.value.details["close_reason"] == "max_duration"
    assert "PARASTREAM_MAX_SESSION_S" in refused.value.message


async def _lingering(headers: dict[str, str], chunks: list[bytes], max_bytes: int, max_s: float = 2.0,
                     delay_s: float = 0.0, reads: int = 0) -> tuple[int, bool]:
    """Runs an app that answers 413 after reading `reads` messages of a body sent as `chunks` (each after
    `delay_s`); returns how many body bytes were taken from the client and whether the answer went out."""
    queue = list(chunks)
    taken = 0

    async def receive() -> Message:
        nonlocal taken
        if not queue:
            await asyncio.sleep(3600)  # a client that stopped sending
        await asyncio.sleep(delay_s)
        body = queue.pop(0)
        taken += len(body)
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    async def app(scope: Any, receive_: Any, send: Any) -> None:
        for _ in range(reads):
            await receive_()
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    await LingeringClose(app, max_bytes, max_s)(scope, receive, send)
    return taken, [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


def test_lingering_close_reads_a_bounded_amount_for_a_bounded_time() -> None:
    chunk = [b"x" * 1000] * 10
    declared = {"content-length": "10000"}
    assert asyncio.run(_lingering(declared, chunk, max_bytes=20_000)) == (10_000, True)  # all of it: a clean close
    assert asyncio.run(_lingering(declared, chunk, max_bytes=5_000)) == (0, True)  # more than the bound: none
    assert asyncio.run(_lingering({"transfer-encoding": "chunked"}, chunk, max_bytes=4_500)) == (5_000, True)
    started = time.monotonic()
    taken, answered = asyncio.run(_lingering(declared, chunk, max_bytes=20_000, max_s=0.3, delay_s=0.1))
    assert answered and 1_000 <= taken < 10_000 and time.monotonic() - started < 1.5  # a slow sender: 0.3 s
    # A client waiting for `100 Continue` has sent nothing: the answer goes out at once and it never sends the body.
    assert asyncio.run(_lingering({**declared, "expect": "100-continue"}, chunk, max_bytes=20_000)) == (0, True)
    # ...unless the app started reading (uvicorn sent `100 Continue`): then the rest is read as for anyone.
    expecting = {**declared, "expect": "100-continue"}
    assert asyncio.run(_lingering(expecting, chunk, max_bytes=20_000, reads=2)) == (10_000, True)
    assert asyncio.run(_lingering({}, [], max_bytes=20_000)) == (0, True)  # no body: nothing to read


# --- a service with small limits --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(model_dir: Path) -> Iterator[ServiceProcess]:
    """One worker, keys k1 and k2, and every limit small; max_discard_bytes is left at its default."""
    settings = dict(
        workers=1,
        api_keys=f"{KEY},{OTHER_KEY}",
        max_sessions_per_key=PER_KEY,
        max_appends_per_s=APPENDS_PER_S,
        max_session_s=MAX_SESSION_S,
        max_ws_message_bytes=WS_MESSAGE_BYTES,
        max_append_bytes=APPEND_BYTES,
        max_upload_bytes=1_000_000,
    )
    with ServiceProcess(model_dir, **settings) as svc:
        yield svc
    assert svc.proc is not None and svc.proc.returncode in CLEAN_EXIT, svc.log()
    assert segments_of(svc.pid) == []
    svc.remove_log()


def _client(svc: ServiceProcess, key: str = KEY) -> ParastreamClient:
    client = ParastreamClient(svc.base_url)
    client.http.headers["Authorization"] = f"Bearer {key}"
    return client


def _ws(svc: ServiceProcess, path: str = "/", key: str = KEY) -> str:
    return svc.base_url.replace("http://", "ws://", 1) + f"{path}?api_key={key}"


def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code and body["message"], body
    return body


async def _funasr_until_close(ws: Any, timeout: float = 30) -> tuple[list[dict[str, Any]], int | None, str]:
    messages = []
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    return messages, ws.close_code, ws.close_reason or ""


async def _realtime_until_close(ws: Any, timeout: float = 30) -> tuple[list[dict[str, Any]], int | None, str]:
    return await _funasr_until_close(ws, timeout)


def test_rest_appends_past_the_rate_are_429_and_write_nothing(limited: ServiceProcess) -> None:
    async def run() -> None:
        async with _client(limited) as client:
            sid = (await client.create_session())["id"]
            pcm = synth_speechlike(0.2, seed=1).astype("<i2").tobytes()
            url = f"/v1/sessions/{sid}/audio"
            headers = {"Content-Type": "application/octet-stream"}
            for _ in range(APPENDS_PER_S):  # a second's worth at once
                assert (await client.http.post(url, content=pcm, headers=headers)).status_code == 200
            r = await client.http.post(url, content=pcm, headers=headers)
            body = _error(r, 429, "rate_limited")
            assert r.headers["Retry-After"] == "1" and body["limit"] == APPENDS_PER_S
            assert "PARASTREAM_MAX_APPENDS_PER_S" in body["message"]
            info = (await client.http.get(f"/v1/sessions/{sid}")).json()
            assert info["samples_received"] == APPENDS_PER_S * len(pcm) // 2  # the refused one wrote nothing
            await asyncio.sleep(1 / APPENDS_PER_S + 0.05)
            assert (await client.http.post(url, content=pcm, headers=headers)).status_code == 200
            await client.http.delete(f"/v1/sessions/{sid}")

    asyncio.run(run())


async def _rest_final(svc: ServiceProcess, pcm: np.ndarray, sample_rate: int, **options: Any) -> TranscriptEvent:
    """The final of a REST session fed `pcm` in one append."""
    async with _client(svc) as client:
        sid = (await client.create_session(sample_rate=sample_rate, **options))["id"]
        events = asyncio.create_task(collect(client, sid))
        await client.append(sid, pcm)
        await client.close(sid)
        final = (await asyncio.wait_for(events, 30))[-1]
    assert final.type == "final" and final.data["text"]
    return final


def test_websockets_past_the_append_rate_gather_audio_and_refuse_nothing(limited: ServiceProcess) -> None:
    """funasr-python's 10 ms frames (320 bytes) and 20 ms realtime appends, unpaced, at 5 appends/s: every sample is
    transcribed, the same text as one REST append, in well under the time the rate would take one append each."""
    pcm = synth_speechlike(1.5, seed=5)
    pcm24 = synth_speechlike(1.2, seed=6, sample_rate=24_000)  # one append: under 64 kB

    async def funasr() -> tuple[str, float]:
        started = time.monotonic()
        async with websockets.connect(_ws(limited)) as ws:
            await ws.send(json.dumps({"mode": "online", "chunk_size": [0, 10, 5], "wav_name": "unpaced",
                                      "is_speaking": True}))
            body = pcm.astype("<i2").tobytes()
            for start in range(0, len(body), 320):
                await ws.send(body[start : start + 320])
            await ws.send(json.dumps({"is_speaking": False}))
            messages = []
            while not messages or not messages[-1]["is_final"]:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        assert not any("error" in m for m in messages), messages
        return "".join(m["text"] for m in messages), time.monotonic() - started

    async def realtime() -> tuple[str, float]:
        started = time.monotonic()
        async with websockets.connect(_ws(limited, "/v1/realtime"), additional_headers=AUTH) as ws:
            chunk = 24_000 * 20 // 1000
            for start in range(0, len(pcm24), chunk):
                audio = base64.b64encode(pcm24[start : start + chunk].astype("<i2").tobytes()).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert event["type"] != "error", event
                if event["type"] == "conversation.item.input_audio_transcription.completed":
                    return event["transcript"], time.monotonic() - started

    async def run() -> None:
        (text, took), (transcript, took_rt) = await asyncio.gather(funasr(), realtime())
        assert text == (await _rest_final(limited, pcm, 16_000, mode="online")).data["text"]
        assert transcript == (await _rest_final(limited, pcm24, 24_000, mode="online")).data["text"]
        # One append per frame at 5/s would take 30 s (FunASR, 60 ms gathered) and 15 s (realtime).
        assert took < 5 and took_rt < 5

    asyncio.run(run())


def test_a_session_at_its_maximum_duration_is_finalised_then_refused(limited: ServiceProcess) -> None:
    """REST: `final` with reason max_duration, then an append is 409 saying why. FunASR: the final message, then a
    close 1000 with the reason. Realtime: the item completes, an `error` session_expired, then the close."""
    pcm = synth_speechlike(1.0, seed=7)

    async def rest() -> None:
        async with _client(limited) as client:
            sid = (await client.create_session(mode="online"))["id"]
            events = asyncio.create_task(collect(client, sid))
            await client.append(sid, pcm)
            final = (await asyncio.wait_for(events, MAX_SESSION_S + 10))[-1]
            assert final.type == "final" and final.data["reason"] == "max_duration" and final.data["text"]
            r = await client.http.post(f"/v1/sessions/{sid}/audio", content=b"\0\0",
                                       headers={"Content-Type": "application/octet-stream"})
            body = _error(r, 409, "session_not_open")
            assert body["close_reason"] == "max_duration" and "PARASTREAM_MAX_SESSION_S" in body["message"]
            info = (await client.http.get(f"/v1/sessions/{sid}")).json()
            assert info["state"] == "finished" and info["close_reason"] == "max_duration"

    async def funasr() -> None:
        async with websockets.connect(_ws(limited)) as ws:
            await ws.send(json.dumps({"mode": "online", "wav_name": "long", "is_speaking": True}))
            await ws.send(pcm.astype("<i2").tobytes())
            messages, code, reason = await _funasr_until_close(ws, MAX_SESSION_S + 10)
        assert messages[-1]["is_final"] is True and "error" not in messages[-1]
        assert code == 1000 and reason.startswith("max_duration") and "PARASTREAM_MAX_SESSION_S" in reason

    async def realtime() -> None:
        async with websockets.connect(_ws(limited, "/v1/realtime"), additional_headers=AUTH) as ws:
            pcm24 = synth_speechlike(1.0, seed=8, sample_rate=24_000).astype("<i2").tobytes()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm24).decode()}))
            events, code, reason = await _realtime_until_close(ws, MAX_SESSION_S + 10)
        kinds = [e["type"] for e in events]
        assert "conversation.item.input_audio_transcription.completed" in kinds
        assert kinds[-1] == "error" and events[-1]["error"]["code"] == "session_expired"
        assert code == 1000 and reason.startswith("session_expired") and "PARASTREAM_MAX_SESSION_S" in reason

    async def run() -> None:
        await asyncio.gather(rest(), funasr(), realtime())

    asyncio.run(run())


def test_a_websocket_message_over_the_limit_closes_1009_with_the_reason(limited: ServiceProcess) -> None:
    """FunASR's protocol and OpenAI realtime: a message one byte over PARASTREAM_MAX_WS_MESSAGE_BYTES closes the
    connection with 1009 and a reason naming the limit; a realtime append whose base64 fits is taken."""

    async def funasr() -> tuple[int | None, str]:
        async with websockets.connect(_ws(limited)) as ws:
            await ws.send(json.dumps({"mode": "online", "is_speaking": True}))
            await ws.send(b"\0" * (WS_MESSAGE_BYTES + 1))
            _, code, reason = await _funasr_until_close(ws)
            return code, reason

    async def realtime_too_big() -> tuple[int | None, str]:
        async with websockets.connect(_ws(limited, "/v1/realtime"), additional_headers=AUTH) as ws:
            pcm = b"\0" * (WS_MESSAGE_BYTES * 3 // 4)  # its base64 alone is the limit; with the JSON, over it
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
            _, code, reason = await _realtime_until_close(ws)
            return code, reason

    async def realtime_fits() -> None:
        async with websockets.connect(_ws(limited, "/v1/realtime"), additional_headers=AUTH) as ws:
            pcm = synth_speechlike(1.0, seed=9, sample_rate=24_000).astype("<i2").tobytes()  # 48 kB: 64 kB of base64
            event = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
            assert len(event) <= WS_MESSAGE_BYTES
            await ws.send(event)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while (event := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] != "input_audio_buffer.committed":
                assert event["type"] != "error", event

    async def run() -> None:
        results = await asyncio.gather(funasr(), realtime_too_big())
        for code, reason in results:
            assert code == 1009 and f"exceeds limit of {WS_MESSAGE_BYTES} bytes" in reason, (code, reason)
        await realtime_fits()

    asyncio.run(run())


def test_sessions_past_a_keys_limit_are_429_and_close_1008(limited: ServiceProcess) -> None:
    async def run() -> None:
        async with _client(limited, OTHER_KEY) as other, _client(limited) as mine:
            if (await other.http.post("/v1/sessions", headers={"Authorization": ""})).status_code != 401:
                pytest.skip("API keys are not enforced by this build (app/auth.py): nothing is counted per key")
            held = [(await other.create_session())["id"] for _ in range(PER_KEY)]
            r = await other.http.post("/v1/sessions")
            body = _error(r, 429, "too_many_sessions")
            assert int(r.headers["Retry-After"]) >= 1 and body["limit"] == PER_KEY
            assert "PARASTREAM_MAX_SESSIONS_PER_KEY" in body["message"]
            # The same key on FunASR's WebSocket: an error message, then a close with the reason.
            async with websockets.connect(_ws(limited, key=OTHER_KEY)) as ws:
                await ws.send(json.dumps({"mode": "online", "is_speaking": True}))
                messages, code, reason = await _funasr_until_close(ws)
            assert messages[-1]["code"] == "too_many_sessions"
            assert code == 1008 and "PARASTREAM_MAX_SESSIONS_PER_KEY" in reason
            # Another key is not held back by it; and once one of the key's sessions ends, it may open another.
            sid = (await mine.create_session())["id"]
            await mine.http.delete(f"/v1/sessions/{sid}")
            await other.http.delete(f"/v1/sessions/{held[0]}")
            held[0] = (await other.create_session())["id"]
            for sid in held:
                await other.http.delete(f"/v1/sessions/{sid}")

    asyncio.run(run())


def _urlopen(url: str, body: bytes | Iterator[bytes], content_type: str) -> tuple[int, dict[str, Any]]:
    """Python's urllib, which sends the whole body before it reads the answer (and asks for Connection: close)."""
    request = urllib.request.Request(url, data=body, headers={**AUTH, "Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_a_client_still_sending_a_refused_body_reads_the_413(limited: ServiceProcess) -> None:
    """64 MiB with a Content-Length, and 64 MiB chunked, to an append and to OpenAI's upload: urllib reads each 413's
    JSON (without the lingering close it got "connection reset by peer" before reading anything)."""
    async def open_session() -> str:
        async with _client(limited) as client:
            return str((await client.create_session())["id"])

    sid = asyncio.run(open_session())

    def chunked(head: bytes = b"") -> Iterator[bytes]:  # no Content-Length: urllib sends Transfer-Encoding: chunked
        yield head
        piece = b"\0" * (1 << 20)
        for _ in range(BIG >> 20):
            yield piece

    append = f"{limited.base_url}/v1/sessions/{sid}/audio"
    upload = f"{limited.base_url}/v1/audio/transcriptions"
    for body in (b"\0" * BIG, chunked()):
        status, answer = _urlopen(append, body, "application/octet-stream")
        assert status == 413 and answer["error"]["code"] == "payload_too_large", answer
        assert answer["error"]["limit"] == APPEND_BYTES
        time.sleep(1 / APPENDS_PER_S)  # each append counts against the rate
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'  # a file part, never ended
    for body in (part + b"\0" * BIG, chunked(part)):
        status, answer = _urlopen(upload, body, "multipart/form-data; boundary=x")
        assert status == 413 and answer["error"]["code"] == "payload_too_large", answer  # OpenAI's shape
        assert "PARASTREAM_MAX_UPLOAD_BYTES" in answer["error"]["message"]

    async def gone() -> None:
        async with _client(limited) as client:
            assert (await client.http.get(f"/v1/sessions/{sid}")).json()["samples_received"] == 0
            await client.http.delete(f"/v1/sessions/{sid}")

    asyncio.run(gone())
