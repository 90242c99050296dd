"""OpenAI's transcription API through OpenAI's own SDK: every response format, `stream=true`, files at other rates
and channel counts, and the errors. The models have random weights (the texts are gibberish), so each answer is
compared with Parastream's REST transcript of the same audio and pipeline, never with a fixed string."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile
from fastapi.testclient import TestClient
from openai import OpenAI

from app.audio_file import decode_audio
from app.client import ParastreamClient, TranscriptEvent
from app.main import create_app
from benchmarks.audio import synth_sentences
from engine.errors import ServiceFull
from engine.settings import Settings
from tests.audio import synth_speechlike
from tests.harness import ServiceProcess
from tests.helpers import collect
from tests.reference_cache import reference_tokens


def rest_events(base_url: str, pcm: np.ndarray, sample_rate: int = 16000, **options: Any) -> list[TranscriptEvent]:
    """The events of a Parastream REST session fed `pcm` (in appends under the fixtures' 64 kB limit), then closed."""

    async def run() -> list[TranscriptEvent]:
        async with ParastreamClient(base_url) as client:
            sid = (await client.create_session(sample_rate=sample_rate, **options))["id"]
            events = asyncio.create_task(collect(client, sid))
            for start in range(0, len(pcm), 24_000):
                await client.append(sid, pcm[start : start + 24_000])
            await client.close(sid)
            return await events

    events = asyncio.run(run())
    assert events[-1].type == "final", events[-1]
    return events


def wav(pcm: np.ndarray, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, pcm, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def sdk(service: ServiceProcess, **options: Any) -> OpenAI:
    return OpenAI(base_url=service.base_url + "/v1", api_key="unused", max_retries=0, **options)


def blocks(subtitles: str) -> list[tuple[str, str]]:
    """(time line, text) of each cue of an SRT or WebVTT file."""
    return re.findall(r"^(\d\d:\d\d:\d\d[,.]\d{3} --> \d\d:\d\d:\d\d[,.]\d{3})\n(.+)$", subtitles, re.M)


def clock(seconds: float, decimal: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{decimal}{ms % 1000:03d}"


def test_models_lists_what_is_served(service: ServiceProcess, twopass_service: ServiceProcess) -> None:
    online = [m.id for m in sdk(service).models.list()]
    assert online == ["parastream", "parastream-online", "whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"]
    assert "parastream-offline" in [m.id for m in sdk(twopass_service).models.list()]
    model = sdk(service).models.retrieve("whisper-1")
    assert (model.id, model.object, model.owned_by) == ("whisper-1", "model", "parastream")
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(service).models.retrieve("parastream-offline")  # no sentence models on this service
    assert missing.value.body["code"] == "model_not_found"


def test_every_format_of_the_online_pipeline_equals_the_rest_transcript(service: ServiceProcess, model_dir: Path) -> None:
    """json, text, verbose_json, srt and vtt of one clip: the REST session's final text, itself FunASR's own loop's;
    segments are the partials' strides (online mode), and the subtitles are those segments."""
    pcm = synth_speechlike(3.5, seed=31)
    rest = rest_events(service.base_url, pcm)
    assert rest[-1].data["tokens"] == reference_tokens(model_dir, pcm)
    text = rest[-1].data["text"]
    client = sdk(service)
    plain = client.audio.transcriptions.create(file=("clip.wav", wav(pcm)), model="whisper-1")
    assert plain.text == text
    assert plain.usage is not None and plain.usage.type == "duration" and plain.usage.seconds == 4  # 3.5 s, rounded up
    assert client.audio.transcriptions.create(
        file=("clip.wav", wav(pcm)), model="whisper-1", response_format="text"
    ) == (text + "\n")
    verbose = client.audio.transcriptions.create(
        file=("clip.wav", wav(pcm)),
        model="gpt-4o-transcribe",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="en",  # accepted and reported; the model hears what it hears
        temperature=0.2,
    )
    assert verbose.text == text and verbose.duration == 3.5 and verbose.language == "en"
    assert verbose.words == []  # the streaming model gives no token times
    segments = verbose.segments or []
    assert "".join(s.text for s in segments) == "".join(e.data["text"] for e in rest if e.type == "partial")
    assert segments[0].start >= 0 and segments[-1].end == 3.5
    assert all(a.end <= b.start for a, b in zip(segments, segments[1:]))
    srt = client.audio.transcriptions.create(file=("clip.wav", wav(pcm)), model="parastream", response_format="srt")
    vtt = client.audio.transcriptions.create(file=("clip.wav", wav(pcm)), model="parastream", response_format="vtt")
    assert blocks(srt) == [(f"{clock(s.start, ',')} --> {clock(s.end, ',')}", s.text) for s in segments]
    assert vtt.startswith("WEBVTT\n\n")
    assert blocks(vtt) == [(f"{clock(s.start, '.')} --> {clock(s.end, '.')}", s.text) for s in segments]


def test_stream_deltas_add_up_to_the_rest_transcript(service: ServiceProcess) -> None:
    pcm = synth_speechlike(3.0, seed=32)
    text = rest_events(service.base_url, pcm)[-1].data["text"]
    events = list(
        sdk(service).audio.transcriptions.create(file=("clip.wav", wav(pcm)), model="gpt-4o-transcribe", stream=True)
    )
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1) and len(events) > 2
    assert events[-1].type == "transcript.text.done" and events[-1].text == text
    assert "".join(e.delta for e in events[:-1]) == text


def test_the_offline_pipeline_gives_sentences_words_and_hotwords(
    twopass_service: ServiceProcess,
) -> None:
    """With VAD + offline + punctuation the upload runs in mode offline: the text, segments (one per sentence) and
    words (the offline tokens' timestamps) equal a REST offline session's; a stream's deltas are the sentences; the
    prompt's words are hotwords."""
    pcm = synth_sentences([1.2, 1.8], seed=33)
    rest = rest_events(twopass_service.base_url, pcm, mode="offline")
    sentences = [e.data for e in rest if e.type == "sentence"]
    assert len(sentences) == 2
    client = sdk(twopass_service)
    verbose = client.audio.transcriptions.create(
        file=("clip.wav", wav(pcm)), model="whisper-1", response_format="verbose_json", timestamp_granularities=["word"]
    )
    assert verbose.text == rest[-1].data["text"]
    assert [(s.start, s.end, s.text) for s in verbose.segments or []] == [
        (s["start_ms"] / 1000, s["end_ms"] / 1000, s["text"]) for s in sentences
    ]
    assert [(w.word, w.start, w.end) for w in verbose.words or []] == [
        (token, a / 1000, b / 1000) for s in sentences for token, (a, b) in zip(s["tokens"], s["timestamps"])
    ]
    stream = list(client.audio.transcriptions.create(file=("clip.wav", wav(pcm)), model="parastream", stream=True))
    assert [e.delta for e in stream[:-1]] == [s["text"] for s in sentences]
    assert stream[-1].text == rest[-1].data["text"]

    hot = rest_events(twopass_service.base_url, pcm, mode="offline", hotwords="一丁 七")
    prompted = client.audio.transcriptions.create(file=("clip.wav", wav(pcm)), model="whisper-1", prompt="一丁，七")
    assert prompted.text == hot[-1].data["text"]
    keywords = client.audio.transcriptions.create(
        file=("clip.wav", wav(pcm)), model="whisper-1", keywords=["一丁", "七"]
    )
    assert keywords.text == hot[-1].data["text"]
    online = client.audio.transcriptions.create(file=("clip.wav", wav(pcm)), model="parastream-online")
    assert online.text == rest_events(twopass_service.base_url, pcm, mode="online")[-1].data["text"]


@pytest.mark.parametrize("fmt, subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_a_stereo_44k_file_is_mixed_to_mono_and_resampled(
    service: ServiceProcess, model_dir: Path, fmt: str, subtype: str
) -> None:
    """The file is decoded, its channels averaged and resampled to 16 kHz: a REST session fed decode_audio's result
    (the endpoint's own function) has the same transcript."""
    left, right = synth_speechlike(2.5, seed=34, sample_rate=44_100), synth_speechlike(2.5, seed=35, sample_rate=44_100)
    out = io.BytesIO()
    soundfile.write(out, np.stack([left, right // 2], axis=1), 44_100, format=fmt, subtype=subtype)
    data = out.getvalue()
    pcm = decode_audio(io.BytesIO(data), 16000)
    assert abs(len(pcm) - 40_000) <= 1  # 2.5 s at 16 kHz
    answer = sdk(service).audio.transcriptions.create(file=(f"clip.{fmt.lower()}", data), model="whisper-1")
    rest = rest_events(service.base_url, pcm)[-1].data
    assert answer.text == rest["text"] and rest["tokens"] == reference_tokens(model_dir, pcm)  # FunASR's own loop


def test_a_file_that_is_no_audio_is_415(service: ServiceProcess) -> None:
    client = sdk(service)
    for name, data in [("clip.m4a", b"\x00\x00\x00\x20ftypM4A " + bytes(200)), ("empty.wav", b"")]:
        with pytest.raises(openai.APIStatusError) as refused:
            client.audio.transcriptions.create(file=(name, data), model="whisper-1")
        assert refused.value.status_code == 415
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "unsupported_audio_format"
        assert "could not decode the file as audio" in error["message"] and "FLAC" in error["message"]
    with pytest.raises(openai.BadRequestError) as short:
        client.audio.transcriptions.create(file=("short.wav", wav(synth_speechlike(0.05, seed=1))), model="whisper-1")
    assert short.value.body["code"] == "audio_too_short"


def _openai_error(r: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and error["param"] == param
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")


def test_bad_requests_are_openai_shaped_4xx(service: ServiceProcess) -> None:
    file = {"file": ("clip.wav", wav(synth_speechlike(0.5, seed=2)))}
    url = service.base_url + "/v1/audio/transcriptions"
    with httpx.Client(timeout=30) as http:
        _openai_error(http.post(url, data={"model": "whisper-1"}), 415, "unsupported_media_type")
        _openai_error(
            http.post(url, data={"model": "whisper-1"}, files={"other": ("x", b"")}), 400, "invalid_value", "file"
        )
        _openai_error(
            http.post(url, data={"response_format": "mp3"}, files=file), 400, "invalid_value", "response_format"
        )
        _openai_error(http.post(url, data={"model": "parastream-2pass"}, files=file), 404, "model_not_found", "model")
        _openai_error(http.post(url, data={"model": "parastream-offline"}, files=file), 404, "model_not_found", "model")
        _openai_error(http.post(url, data={"temperature": "warm"}, files=file), 400, "invalid_value", "temperature")
        _openai_error(http.post(url, data={"stream": "maybe"}, files=file), 400, "invalid_value", "stream")
        _openai_error(
            http.post(url, data={"timestamp_granularities[]": "char"}, files=file),
            400,
            "invalid_value",
            "timestamp_granularities",
        )
        _openai_error(http.post(url, data={"keywords[]": "x" * 65}, files=file), 400, "invalid_options")
        _openai_error(
            http.post(url, content=b"--b\r\n", headers={"Content-Type": "multipart/form-data"}),  # no boundary
            400,
            "invalid_multipart",
        )
        # A prompt is a hint: what cannot be a hotword in it is dropped, never refused.
        r = http.post(url, data={"prompt": "x" * 5000, "model": "parastream"}, files=file)
        assert r.status_code == 200 and "text" in r.json()


class _IdleEngine:
    """Enough of an engine for requests refused before any session is made, and for a full service."""

    started = True

    async def stop(self) -> None:
        return None

    def create_session(self, *args: Any, **kwargs: Any) -> None:  # protocol=, owner=
        raise ServiceFull("64 sessions are open (PARASTREAM_MAX_SESSIONS)", retry_after_s=5)


def test_an_upload_over_the_limit_is_413_while_reading() -> None:
    settings = Settings(_env_file=None, max_upload_bytes=10_000)
    app = create_app(settings, engine=_IdleEngine())
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + bytes(20_000)
    headers = {"Content-Type": "multipart/form-data; boundary=b"}

    def chunks() -> Any:
        for start in range(0, len(body), 4096):  # no Content-Length: checked while reading
            yield body[start : start + 4096]

    with TestClient(app) as client:
        for answer in (
            client.post("/v1/audio/transcriptions", content=body, headers=headers),
            client.post("/v1/audio/transcriptions", content=chunks(), headers=headers),
        ):
            _openai_error(answer, 413, "payload_too_large", "file")
            assert answer.json()["error"]["limit"] == 10_000


def test_a_full_service_is_503_with_retry_after() -> None:
    """OpenAI's SDK waits for Retry-After and tries again."""
    app = create_app(Settings(_env_file=None), engine=_IdleEngine())
    with TestClient(app) as client:
        answer = client.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(synth_speechlike(0.5, seed=3)))})
    _openai_error(answer, 503, "service_full")
    assert answer.headers["retry-after"] == "5"
