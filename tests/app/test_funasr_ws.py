"""FunASR's WebSocket protocol at ws://HOST:PORT/ (app/protocols/funasr_ws.py), driven by real clients: funasr-client's
async API (its sync client deadlocks on exit, whatever the server does), and a bare `websockets` client that offers
no subprotocol and sends 333-byte frames, like FunASR's HTML5 page and C++ clients.

The models are tiny random ones, so texts are gibberish: each transcript is compared with the REST transcript of the
same audio, in a REST session created with the options the WebSocket client sent (REST 2pass sentences equal
FunASR's own 2pass loop: tests/app/test_2pass.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from funasr_client import async_file_asr_stream, merge_messages
from websockets.asyncio.client import ClientConnection

from app.client import ParastreamClient, TranscriptEvent
from app.protocols.funasr_ws_options import ProtocolError, strip_wav_header
from benchmarks.audio import synth_sentences
from engine.messages import StreamOptions
from tests.audio import synth_speechlike
from tests.harness import ServiceProcess, wait_for
from tests.helpers import collect
from tests.reference_cache import reference_tokens

FUNASR_CLIENT_CHUNK = [5, 10, 5]  # what funasr-client sends; it sends no look-backs: the service defaults apply


def funasr_session_ids(svc: ServiceProcess) -> list[str]:
    """The ids of the sessions FunASR's WebSocket opened, in order, from the service's log line for each (the line
    names no client field: the test takes the first id that appears after its own connection)."""
    return re.findall(r"FunASR WebSocket utterance \d+ of its connection is session ([0-9a-f]{32})", svc.log(tail=10**9))


def new_session_id(svc: ServiceProcess, before: int) -> str | None:
    ids = funasr_session_ids(svc)
    return ids[before] if len(ids) > before else None


def ws_url(svc: ServiceProcess) -> str:
    return svc.base_url.replace("http://", "ws://", 1) + "/"


def write_wav(path: Path, pcm: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


async def rest_events(svc: ServiceProcess, pcm: np.ndarray, **options: Any) -> list[TranscriptEvent]:
    """The same audio through REST in one append, with the same options."""
    async with ParastreamClient(svc.base_url) as client:
        session = (await client.create_session(**options))["id"]
        events = asyncio.create_task(collect(client, session))
        body = pcm.astype("<i2").tobytes()
        for start in range(0, len(body), 64_000):
            await client.append(session, body[start : start + 64_000])
        await client.close(session)
        return await asyncio.wait_for(events, 60)


def texts(events: list[TranscriptEvent], kind: str) -> list[str]:
    return [e.data["text"] for e in events if e.type == kind]


async def funasr_client_messages(svc: ServiceProcess, path: Path, mode: str) -> list[dict[str, Any]]:
    stream = async_file_asr_stream(path, ws_url(svc), mode=mode)
    return [message async for message in stream]


def assert_one_final_at_the_end(messages: list[dict[str, Any]], wav_name: str) -> None:
    assert [m["is_final"] for m in messages] == [False] * (len(messages) - 1) + [True]
    assert messages[-1].get("is_end") is True
    assert all(m["wav_name"] == wav_name and "mode" in m and "text" in m for m in messages)


def last_text(events: list[TranscriptEvent]) -> str:
    """The text of the session's last partial or sentence: what the final message carries when the client sent its
    audio unpaced (its end came before the events, so the relay held each one back until the next)."""
    return [e.data["text"] for e in events if e.type in ("partial", "sentence") and e.data["text"]][-1]


def test_funasr_client_online_equals_rest(service: ServiceProcess, model_dir: Path, tmp_path: Path) -> None:
    """funasr-client's online messages join to the REST transcript with its options, and that is FunASR's own loop's
    with the same options (chunk_size [5, 10, 5], the service's look-backs)."""
    pcm = synth_speechlike(4.0, seed=61)
    path = write_wav(tmp_path / "online.wav", pcm)

    async def run() -> tuple[list[dict[str, Any]], list[TranscriptEvent]]:
        messages = await asyncio.wait_for(funasr_client_messages(service, path, "online"), 60)
        return messages, await rest_events(service, pcm, chunk_size=FUNASR_CLIENT_CHUNK, mode="online")

    messages, rest = asyncio.run(run())
    assert_one_final_at_the_end(messages, "online.wav")
    assert {m["mode"] for m in messages} == {"online"}
    assert messages[-1]["text"] == last_text(rest)
    assert "".join(m["text"] for m in messages) == "".join(texts(rest, "partial")) == rest[-1].data["text"]
    assert rest[-1].data["text"]  # the clip has text, so the comparison means something
    options = StreamOptions(tuple(FUNASR_CLIENT_CHUNK))  # type: ignore[arg-type]
    assert rest[-1].data["tokens"] == reference_tokens(model_dir, pcm, options)


def test_funasr_client_2pass_equals_rest(twopass_service: ServiceProcess, tmp_path: Path) -> None:
    """Sentences (`2pass-offline`, timestamps a JSON string), partials (`2pass-online`), and funasr-client's own merge
    of the sentences equal the REST 2pass session's."""
    pcm = synth_sentences([1.6, 2.2], seed=62)
    path = write_wav(tmp_path / "twopass.wav", pcm)

    async def run() -> tuple[list[dict[str, Any]], list[TranscriptEvent]]:
        raw = await asyncio.wait_for(funasr_client_messages(twopass_service, path, "2pass"), 90)
        return raw, await rest_events(twopass_service, pcm, chunk_size=FUNASR_CLIENT_CHUNK, mode="2pass")

    messages, rest = asyncio.run(run())
    assert_one_final_at_the_end(messages, "twopass.wav")
    sentences = [m for m in messages if m["mode"] == "2pass-offline"]
    rest_sentences = [e.data for e in rest if e.type == "sentence"]
    assert len(rest_sentences) >= 2
    assert [m["text"] for m in sentences] == [s["text"] for s in rest_sentences]
    # funasr-client decodes `timestamp` with json.loads: it arrived as a string
    assert [m.get("timestamp", []) for m in sentences] == [s["timestamps"] for s in rest_sentences]
    assert "".join(m["text"] for m in messages if m["mode"] == "2pass-online") == "".join(texts(rest, "partial"))
    assert {m["mode"] for m in messages} <= {"2pass-online", "2pass-offline"}
    assert messages[-1]["text"] == last_text(rest)
    merged = merge_messages(messages)
    assert merged["text"] == rest[-1].data["text"] == "".join(s["text"] for s in rest_sentences)


async def read_until_final(ws: ClientConnection, timeout: float = 60) -> list[dict[str, Any]]:
    messages = []
    while not messages or not messages[-1]["is_final"]:
        messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    return messages


@pytest.mark.parametrize(("end", "offered"), [({"is_finished": True}, None), ({"is_end": True}, ["binary"])])
def test_bare_client_333_byte_frames(service: ServiceProcess, end: dict[str, bool], offered: list[str] | None) -> None:
    """No subprotocol (or `binary`, echoed), chunk_size as a string, unknown keys, odd frames sent unpaced, the C++
    and the newest Python client's ends of audio; a second `is_speaking: false` after the final gets no answer."""
    pcm = synth_speechlike(3.0, seed=63)
    first = {
        "mode": "online", "chunk_size": "5,10,5", "chunk_interval": 10, "encoder_chunk_look_back": 4,
        "decoder_chunk_look_back": 0, "wav_name": "odd-frames", "wav_format": "pcm", "audio_fs": 16000,
        "is_speaking": True, "itn": True, "svs_lang": "auto", "svs_itn": True, "no_such_field": [1, 2],
    }

    async def run() -> tuple[str | None, list[dict[str, Any]], list[TranscriptEvent]]:
        async with websockets.connect(ws_url(service), subprotocols=offered) as ws:
            await ws.send(json.dumps(first))
            body = pcm.astype("<i2").tobytes()
            for start in range(0, len(body), 333):
                await ws.send(body[start : start + 333])
            await ws.send(json.dumps(end))
            messages = await read_until_final(ws)
            await ws.send(json.dumps({"is_speaking": False}))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)
            protocol = ws.subprotocol
        rest = await rest_events(
            service, pcm, chunk_size=[5, 10, 5], encoder_chunk_look_back=4, decoder_chunk_look_back=0, mode="online"
        )
        return protocol, messages, rest

    protocol, messages, rest = asyncio.run(run())
    assert protocol == (offered[0] if offered else None)
    assert_one_final_at_the_end(messages, "odd-frames")
    assert "".join(m["text"] for m in messages) == "".join(texts(rest, "partial"))
    assert rest[-1].data["text"]


def test_html5_page_file_mode(service: ServiceProcess, tmp_path: Path) -> None:
    """FunASR's HTML5 page in file mode: its messages as it builds them, and the .wav file's bytes whole, header
    included, in 960-byte frames, unpaced. The header is not transcribed."""
    pcm = synth_speechlike(2.5, seed=67)
    wav = write_wav(tmp_path / "page.wav", pcm).read_bytes()
    page = {"chunk_size": [5, 10, 5], "wav_name": "h5", "chunk_interval": 10, "itn": False, "mode": "online"}

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(ws_url(service)) as ws:
            await ws.send(json.dumps({**page, "is_speaking": True, "wav_format": "PCM", "audio_fs": 16000}))
            for start in range(0, len(wav), 960):
                await ws.send(wav[start : start + 960])
            await ws.send(json.dumps({**page, "is_speaking": False}))
            return await read_until_final(ws)

    messages = asyncio.run(run())
    rest = asyncio.run(rest_events(service, pcm, chunk_size=[5, 10, 5], mode="online"))
    assert_one_final_at_the_end(messages, "h5")
    assert "".join(m["text"] for m in messages) == "".join(texts(rest, "partial"))


def test_wav_header_is_skipped_or_refused() -> None:
    pcm = synth_speechlike(0.1, seed=68).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    stereo = buffer.getvalue()
    mono = stereo[:22] + (1).to_bytes(2, "little") + stereo[24:]  # the same header, saying 1 channel
    assert strip_wav_header(mono) == pcm
    assert strip_wav_header(pcm) == pcm
    with pytest.raises(ProtocolError, match="not 16-bit mono PCM"):
        strip_wav_header(stereo)


def test_utterances_in_sequence_on_one_connection(service: ServiceProcess) -> None:
    """FunASR's Python client sends a list of files on one connection: each gets its final, with its wav_name and
    the first message's settings; an utterance with no audio gets its final too."""
    clips = [synth_speechlike(1.5, seed=64), synth_speechlike(1.2, seed=65)]

    async def run() -> list[list[dict[str, Any]]]:
        got = []
        async with websockets.connect(ws_url(service), subprotocols=["binary"]) as ws:
            for i, pcm in enumerate(clips):
                options = {"mode": "online", "chunk_size": [5, 10, 5]} if i == 0 else {}
                await ws.send(json.dumps({**options, "wav_name": f"clip{i}", "is_speaking": True}))
                await ws.send(pcm.astype("<i2").tobytes())
                await ws.send(json.dumps({"is_speaking": False}))
                got.append(await read_until_final(ws))
            await ws.send(json.dumps({"is_speaking": True, "wav_name": "empty"}))
            await ws.send(json.dumps({"is_speaking": False}))
            got.append(await read_until_final(ws))
        return got

    results = asyncio.run(run())
    for i, (messages, pcm) in enumerate(zip(results, clips)):
        assert_one_final_at_the_end(messages, f"clip{i}")
        rest = asyncio.run(rest_events(service, pcm, chunk_size=[5, 10, 5], mode="online"))
        assert "".join(m["text"] for m in messages) == "".join(texts(rest, "partial"))
    # No audio: the close's flush alone (a random model may still say something there), as in REST.
    rest = asyncio.run(rest_events(service, np.zeros(0, np.int16), chunk_size=[5, 10, 5], mode="online"))
    text = rest[-1].data["text"]
    assert results[-1] == [{"mode": "online", "wav_name": "empty", "text": text, "is_final": True, "is_end": True}]


async def refused(svc: ServiceProcess, first: str | bytes) -> tuple[dict[str, Any], int, str]:
    """The error message and the close code and reason after sending `first`."""
    async with websockets.connect(ws_url(svc)) as ws:
        await ws.send(first)
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
        assert ws.close_code is not None
        return message, ws.close_code, ws.close_reason or ""


def test_2pass_without_sentence_models_is_refused(service: ServiceProcess) -> None:
    for mode in ("2pass", "offline"):
        message, code, reason = asyncio.run(refused(service, json.dumps({"mode": mode, "is_speaking": True})))
        assert code == 1008 and "PARASTREAM_VAD_MODEL" in reason
        assert message["mode"] == mode and message["is_final"] is False and message["is_end"] is True
        assert "PARASTREAM_VAD_MODEL" in message["error"] and message["code"] == "invalid_options"


@pytest.mark.parametrize(
    ("first", "code", "says"),
    [
        ("not json", 1008, "JSON object"),
        ("[1, 2]", 1008, "JSON object"),
        (b"\x00\x01\x02\x03", 1003, "first message must be JSON"),
        ('{"chunk_size": [5, 10]}', 1008, "chunk_size"),
        ('{"chunk_size": "5,x,5"}', 1008, "chunk_size"),
        ('{"chunk_size": [0, 99, 5]}', 1008, "chunk_size"),
        ('{"mode": "fast"}', 1008, "mode"),
        ('{"wav_format": "mp3"}', 1003, "wav_format"),
        ('{"audio_fs": 44100, "is_speaking": true}', 1008, "sample_rate"),
        ('{"hotwords": "{\\"unclosed\\": 1"}', 1008, "hotwords"),
    ],
)
def test_bad_first_message_is_refused_with_a_reason(
    service: ServiceProcess, first: str | bytes, code: int, says: str
) -> None:
    message, close_code, reason = asyncio.run(refused(service, first))
    assert close_code == code and says in reason
    assert says in message["error"] and message["is_end"] is True and "mode" in message


def test_full_service_closes_with_1013(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        filled = []
        try:
            while (r := http.post("/v1/sessions", json={})).status_code == 201:
                filled.append(r.json()["id"])
            assert r.status_code == 503 and filled
            message, code, reason = asyncio.run(refused(service, json.dumps({"mode": "online", "is_speaking": True})))
        finally:
            for sid in filled:
                http.delete(f"/v1/sessions/{sid}")
    assert code == 1013 and "PARASTREAM_MAX_SESSIONS" in reason
    assert message["code"] == "service_full" and message["retry_after_s"] > 0


def test_dropped_socket_aborts_its_session(service: ServiceProcess) -> None:
    """The session of a socket that drops mid-stream is aborted at once (GET answers 404; the fixture's teardown
    checks that no ring is left), not left open for the idle timeout."""
    name = f"drop-{np.random.default_rng().integers(1 << 30)}"
    before = len(funasr_session_ids(service))

    def session_id() -> str | None:
        return new_session_id(service, before)

    async def run() -> None:
        ws = await websockets.connect(ws_url(service))
        await ws.send(json.dumps({"mode": "online", "wav_name": name, "is_speaking": True}))
        await ws.send(synth_speechlike(1.0, seed=66).tobytes())
        await asyncio.to_thread(wait_for, session_id, 30, "the session's log line")
        sid = session_id()
        async with httpx.AsyncClient(base_url=service.base_url) as http:
            assert (await http.get(f"/v1/sessions/{sid}")).json()["state"] == "open"
            ws.transport.abort()  # no close frame: the connection just drops
            for _ in range(200):
                if (await http.get(f"/v1/sessions/{sid}")).status_code == 404:
                    return
                await asyncio.sleep(0.05)
        raise AssertionError("the dropped socket's session is still there")

    asyncio.run(run())


def test_worker_killed_mid_utterance_changes_no_word(service: ServiceProcess) -> None:
    """Recovery applies to a WebSocket session as to any: its worker is SIGKILLed mid-utterance, the session carries
    over, and the client's joined text is still the REST transcript of the same audio."""
    name = f"crash-{np.random.default_rng().integers(1 << 30)}"
    pcm = synth_speechlike(6.0, seed=67)
    frame = 1920  # FunASR's Python client's 60 ms frames, sent at twice real time
    before = len(funasr_session_ids(service))

    def session_id() -> str | None:
        return new_session_id(service, before)

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any], list[TranscriptEvent]]:
        async with websockets.connect(ws_url(service), subprotocols=["binary"]) as ws, httpx.AsyncClient(
            base_url=service.base_url
        ) as http:
            await ws.send(json.dumps({"mode": "online", "wav_name": name, "is_speaking": True}))
            body = pcm.astype("<i2").tobytes()
            killed, sid = False, None
            for start in range(0, len(body), frame):
                await ws.send(body[start : start + frame])
                await asyncio.sleep(0.03)
                sid = sid or session_id()
                if not killed and sid is not None:
                    info = (await http.get(f"/v1/sessions/{sid}")).json()
                    if info["samples_processed"] >= 2 * 16000:  # strides done: the worker holds a cache
                        worker = next(w for w in service.workers() if w["slot"] == info["worker"])
                        os.kill(worker["pid"], signal.SIGKILL)
                        killed = True
            assert killed, "the utterance ended before its worker could be killed"
            await ws.send(json.dumps({"is_speaking": False}))
            messages = await read_until_final(ws, 60)
            info = (await http.get(f"/v1/sessions/{sid}")).json()
        return messages, info, await rest_events(service, pcm, mode="online")

    messages, info, rest = asyncio.run(run())
    assert info["restores"] >= 1
    assert_one_final_at_the_end(messages, name)
    assert "".join(m["text"] for m in messages) == rest[-1].data["text"]
