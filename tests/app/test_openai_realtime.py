"""OpenAI's realtime transcription through OpenAI's own SDK (`client.realtime.connect`, and the beta
`client.beta.realtime.connect`): the transcripts equal a Parastream REST session at 24 kHz fed the same PCM (the
resampler is split-invariant, so both hear the same 16 kHz audio); with a VAD, one item per sentence."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from openai import AsyncOpenAI

from benchmarks.audio import synth_sentences
from engine.audio import Downsampler24k
from tests.app.test_openai import rest_events
from tests.audio import synth_speechlike
from tests.harness import ServiceProcess
from tests.helpers import metric, until
from tests.reference_cache import reference_tokens

RATE = 24_000
CHUNK = RATE // 10  # 100 ms appends, as a microphone client sends them
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


def client(service: ServiceProcess) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=service.base_url + "/v1",
        websocket_base_url=service.base_url.replace("http", "ws") + "/v1",  # the beta client assumes wss otherwise
        api_key="unused",
    )


async def send_audio(conn: Any, pcm: np.ndarray) -> None:
    for start in range(0, len(pcm), CHUNK):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + CHUNK].tobytes()).decode())


async def until_event(conn: Any, kind: str, into: list[Any], timeout: float = 30) -> Any:
    """Events into `into` until one of type `kind`, which is returned."""
    while True:
        event = await asyncio.wait_for(conn.recv(), timeout)
        into.append(event)
        if event.type == kind:
            return event


def items(events: list[Any]) -> dict[str, dict[str, Any]]:
    """Per item id, in order of completion: its deltas joined and its transcript."""
    deltas: dict[str, str] = {}
    done: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.type == DELTA:
            deltas[e.item_id] = deltas.get(e.item_id, "") + e.delta
        elif e.type == COMPLETED:
            done[e.item_id] = {"deltas": deltas.get(e.item_id, ""), "transcript": e.transcript}
    return done


def test_online_items_per_commit_equal_the_rest_transcript(service: ServiceProcess, model_dir: Path) -> None:
    """Without a VAD each commit is one item: its deltas (the partials) add up to its transcript, which is the
    REST transcript of the same 24 kHz PCM. A bad event gets an `error` event and the connection carries on."""
    clips = [synth_speechlike(2.0, seed=41, sample_rate=RATE), synth_speechlike(1.5, seed=42, sample_rate=RATE)]

    async def run() -> list[Any]:
        events: list[Any] = []
        async with client(service).realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await until_event(conn, "session.created", events)
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": RATE},
                            "transcription": {"model": "gpt-4o-transcribe", "language": "zh"},
                            "turn_detection": {"type": "server_vad"},
                        }
                    },
                }
            )
            await until_event(conn, "session.updated", events)
            await conn.send({"type": "response.create"})  # a conversation event: not served here
            await until_event(conn, "error", events)
            await conn.input_audio_buffer.commit()  # nothing to commit yet
            await until_event(conn, "error", events)
            for pcm in clips:
                await send_audio(conn, pcm)
                await conn.input_audio_buffer.commit()
            while len(items(events)) < len(clips):
                await until_event(conn, COMPLETED, events)
        return events

    events = asyncio.run(run())
    updated = next(e for e in events if e.type == "session.updated")
    assert updated.session.audio.input.turn_detection is None  # no VAD here: items are commits
    unsupported, empty = [e.error for e in events if e.type == "error"]
    assert unsupported.code == "unsupported_event" and unsupported.type == "invalid_request_error"
    assert empty.code == "input_audio_buffer_commit_empty"
    committed = [e for e in events if e.type == "input_audio_buffer.committed"]
    assert [c.previous_item_id for c in committed] == [None, committed[0].item_id]
    done = items(events)
    assert list(done) == [c.item_id for c in committed]
    for item, pcm in zip(done.values(), clips):
        rest = rest_events(service.base_url, pcm, sample_rate=RATE)[-1].data
        assert item["deltas"] == item["transcript"] == rest["text"]
        # ...and that is FunASR's own loop on the 16 kHz audio the split-invariant resampler makes of the clip
        assert rest["tokens"] == reference_tokens(model_dir, Downsampler24k().process(pcm))


def test_the_beta_client_and_clear(service: ServiceProcess) -> None:
    """The older `transcription_session.update` form; `input_audio_buffer.clear` drops the audio so far (and its
    session); a dropped socket aborts the session it had open."""
    pcm = synth_speechlike(1.5, seed=43, sample_rate=RATE)
    open_before = metric(service.base_url, "parastream_sessions_open")

    async def run() -> list[Any]:
        events: list[Any] = []
        async with client(service).beta.realtime.connect(model="gpt-4o-transcribe") as conn:
            await until_event(conn, "session.created", events)
            await conn.transcription_session.update(
                session={"input_audio_format": "pcm16", "input_audio_transcription": {"model": "whisper-1"}}
            )
            await until_event(conn, "transcription_session.updated", events)
            await send_audio(conn, synth_speechlike(1.0, seed=44, sample_rate=RATE))
            await conn.input_audio_buffer.clear()
            await until_event(conn, "input_audio_buffer.cleared", events)
            await conn.input_audio_buffer.commit()  # the cleared audio is gone
            await until_event(conn, "error", events)
            await send_audio(conn, pcm)
            await conn.input_audio_buffer.commit()
            await until_event(conn, COMPLETED, events)
            await send_audio(conn, pcm)  # left open: the socket closes with a session in progress
        return events

    events = asyncio.run(run())
    assert next(e for e in events if e.type == "error").error.code == "input_audio_buffer_commit_empty"
    [item] = items(events).values()
    assert item["deltas"] == item["transcript"] == rest_events(service.base_url, pcm, sample_rate=RATE)[-1].data["text"]

    async def closed() -> bool:
        return metric(service.base_url, "parastream_sessions_open") <= open_before

    asyncio.run(until(closed, 10, "the dropped socket's session to be aborted"))


def test_with_a_vad_each_sentence_is_an_item(twopass_service: ServiceProcess) -> None:
    """2pass service, default session: per sentence, speech_started / speech_stopped at the sentence's bounds,
    committed and completed with its text, as a REST 2pass session of the same 24 kHz PCM gives them; the deltas
    are its partials. Commit flushes the sentence in progress."""
    pcm = synth_sentences([1.2, 1.6], seed=45, sample_rate=RATE)
    rest = rest_events(twopass_service.base_url, pcm, sample_rate=RATE, mode="2pass")
    sentences = [e.data for e in rest if e.type == "sentence"]
    assert len(sentences) == 2

    async def run() -> list[Any]:
        events: list[Any] = []
        async with client(twopass_service).realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await until_event(conn, "session.created", events)
            await send_audio(conn, pcm)
            await conn.input_audio_buffer.commit()
            while sum(e.type == COMPLETED and bool(e.transcript) for e in events) < len(sentences):
                await until_event(conn, COMPLETED, events)
        return events

    events = asyncio.run(run())
    assert events[0].session.audio.input.turn_detection.type == "server_vad"
    started = [e for e in events if e.type == "input_audio_buffer.speech_started"]
    stopped = [e for e in events if e.type == "input_audio_buffer.speech_stopped"]
    completed = [e for e in events if e.type == COMPLETED and e.transcript]  # partials no sentence took up: ""
    assert [(e.audio_start_ms, e.item_id) for e in started] == [
        (s["start_ms"], c.item_id) for s, c in zip(sentences, completed)
    ]
    assert [(e.audio_end_ms, e.item_id) for e in stopped] == [
        (s["end_ms"], c.item_id) for s, c in zip(sentences, completed)
    ]
    assert [c.transcript for c in completed] == [s["text"] for s in sentences]
    # An item's deltas are the partials since the previous sentence (REST events come in the same order).
    partials_before: list[str] = []
    text = ""
    for e in rest:
        if e.type == "partial":
            text += e.data["text"]
        elif e.type == "sentence":
            partials_before.append(text)
            text = ""
    done = items(events)
    assert [done[c.item_id]["deltas"] for c in completed] == partials_before


def test_bad_events_get_error_events_and_the_socket_stays(service: ServiceProcess) -> None:
    url = service.base_url.replace("http", "ws") + "/v1/realtime?intent=transcription"
    bad = [
        "not json",
        b"\x00\x01",
        json.dumps([1, 2]),
        json.dumps({"type": "input_audio_buffer.append", "audio": "!!!", "event_id": "mine"}),
        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01").decode()}),
        json.dumps({"type": "session.update", "session": {"type": "realtime"}}),
        json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}),
        json.dumps(
            {"type": "session.update", "session": {"audio": {"input": {"transcription": {"model": "parastream-x"}}}}}
        ),
    ]

    async def run() -> list[dict[str, Any]]:
        async with websockets.connect(url) as ws:
            answers = [json.loads(await ws.recv())]
            for message in bad:
                await ws.send(message)
                answers.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
            answers.append(json.loads(await ws.recv()))
        async with websockets.connect(url + "&model=parastream-x") as ws:  # a typo in one of our ids, in the URL
            created, refused = json.loads(await ws.recv()), json.loads(await ws.recv())
            assert created["type"] == "session.created" and refused["error"]["code"] == "model_not_found"
        return answers

    created, *errors, updated = asyncio.run(run())
    assert created["type"] == "session.created" and updated["type"] == "session.updated"
    assert [e["type"] for e in errors] == ["error"] * len(bad)
    assert [e["error"]["code"] for e in errors] == [
        "invalid_json",
        "invalid_event",
        "invalid_event",
        "invalid_value",
        "invalid_value",
        "invalid_value",
        "invalid_value",
        "model_not_found",
    ]
    assert errors[3]["error"]["event_id"] == "mine" and errors[3]["error"]["param"] == "audio"
    assert all(e["error"]["message"] and e["error"]["type"] == "invalid_request_error" for e in errors)
