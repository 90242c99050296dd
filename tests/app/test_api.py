"""Every bad request gets a clear JSON 4xx, and changes nothing else: a bystander session's transcript stays exact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app.client import ParastreamClient
from tests.audio import synth_speechlike
from tests.harness import ServiceProcess, segments_of
from tests.helpers import PCM, collect, session_info, until
from tests.reference_cache import reference_tokens


def _error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()["error"]
    assert body["code"] == code and body["message"]
    return body


@pytest.fixture
def http(service: ServiceProcess):
    with httpx.Client(base_url=service.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def sid(http: httpx.Client) -> str:
    return http.post("/v1/sessions").json()["id"]


def test_create_defaults_and_unguessable_id(http: httpx.Client) -> None:
    r = http.post("/v1/sessions")
    assert r.status_code == 201
    body = r.json()
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0  # 128 random bits in hex
    assert body["state"] == "open" and body["sample_rate"] == 16000
    assert body["chunk_size"] == [0, 10, 5]
    assert (body["encoder_chunk_look_back"], body["decoder_chunk_look_back"]) == (4, 1)
    assert http.post("/v1/sessions").json()["id"] != body["id"]


@pytest.mark.parametrize(
    "payload",
    [
        {"sample_rate": 44100},
        {"sample_rate": "fast"},
        {"chunk_size": [0, 0, 5]},
        {"chunk_size": [0, 10]},
        {"chunk_size": [-1, 10, 5]},
        {"chunk_size": "0,10,5"},
        {"encoder_chunk_look_back": -1},
        {"unknown_option": 1},
    ],
)
def test_bad_options_are_422(http: httpx.Client, payload: dict) -> None:
    r = http.post("/v1/sessions", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"]


def test_malformed_json_is_422(http: httpx.Client) -> None:
    r = http.post("/v1/sessions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_bad_audio_bodies(http: httpx.Client, sid: str) -> None:
    url = f"/v1/sessions/{sid}/audio"
    _error(http.post(url, content=b"\x01\x02\x03", headers=PCM), 400, "invalid_audio")
    _error(http.post(url, content=b"", headers=PCM), 400, "invalid_audio")
    _error(http.post(url, content=b"\x00\x00", headers={"Content-Type": "audio/wav"}), 415, "unsupported_media_type")
    _error(http.post(url, content=b"\x00\x00"), 415, "unsupported_media_type")
    body = _error(http.post(url, content=b"\x00" * 64_002, headers=PCM), 413, "payload_too_large")
    assert body["limit"] == 64_000

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b"\x00" * 2000

    _error(http.post(url, content=chunked(), headers=PCM), 413, "payload_too_large")
    # None of that was taken as audio.
    assert http.get(f"/v1/sessions/{sid}").json()["samples_received"] == 0
    r = http.post(url, content=b"\x01\x00", headers=PCM)  # a single sample is fine
    assert r.status_code == 200 and r.json()["samples_received"] == 1


def test_unknown_session_is_404_everywhere(http: httpx.Client) -> None:
    ghost = "0" * 32
    _error(http.get(f"/v1/sessions/{ghost}"), 404, "session_not_found")
    _error(http.post(f"/v1/sessions/{ghost}/audio", content=b"\x00\x00", headers=PCM), 404, "session_not_found")
    _error(http.post(f"/v1/sessions/{ghost}/close"), 404, "session_not_found")
    _error(http.delete(f"/v1/sessions/{ghost}"), 404, "session_not_found")
    _error(http.get(f"/v1/sessions/{ghost}/events"), 404, "session_not_found")
    _error(http.get("/v1/nowhere"), 404, "not_found")


def test_audio_after_close_is_409_and_close_is_idempotent(http: httpx.Client, sid: str) -> None:
    http.post(f"/v1/sessions/{sid}/audio", content=b"\x00\x01" * 100, headers=PCM)
    assert http.post(f"/v1/sessions/{sid}/close").status_code == 200
    assert http.post(f"/v1/sessions/{sid}/close").status_code == 200
    _error(http.post(f"/v1/sessions/{sid}/audio", content=b"\x00\x00", headers=PCM), 409, "session_not_open")


def test_bad_last_event_id_is_400(http: httpx.Client, sid: str) -> None:
    _error(http.get(f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": "abc"}), 400, "invalid_last_event_id")


def test_delete_aborts_frees_and_tells_subscribers(service: ServiceProcess) -> None:
    async def run() -> list:
        async with ParastreamClient(service.base_url) as client:
            session = await client.create_session()
            events = asyncio.create_task(collect(client, session["id"]))
            await client.append(session["id"], synth_speechlike(2.0, seed=3))

            async def transcribing() -> bool:
                return (await session_info(client, session["id"]))["samples_processed"] > 0

            await until(transcribing, 30, "the first stride")  # aborted mid-stream, holding its ring
            assert len(segments_of(service.pid)) >= 1
            r = await client.http.delete(f"/v1/sessions/{session['id']}")
            assert r.status_code == 204
            assert (await client.http.get(f"/v1/sessions/{session['id']}")).status_code == 404
            return await asyncio.wait_for(events, 30)

    events = asyncio.run(run())
    assert events[-1].type == "error" and events[-1].data["code"] == "aborted"


def test_bad_requests_leave_a_concurrent_session_exact(service: ServiceProcess, model_dir: Path) -> None:
    """A bystander streams while another client sends every kind of bad request at it and around it."""
    clip = synth_speechlike(5.0, seed=21)

    async def run() -> list:
        async with ParastreamClient(service.base_url) as client:
            bystander = (await client.create_session())["id"]
            victim = (await client.create_session())["id"]
            events = asyncio.create_task(collect(client, bystander))
            http = client.http
            bad = [
                lambda: http.post(f"/v1/sessions/{bystander}/audio", content=b"\x01\x02\x03", headers=PCM),
                lambda: http.post(f"/v1/sessions/{bystander}/audio", content=b"", headers=PCM),
                lambda: http.post(f"/v1/sessions/{bystander}/audio", content=b"\x00\x00", headers={"Content-Type": "text/plain"}),
                lambda: http.post(f"/v1/sessions/{bystander}/audio", content=b"\x00" * 64_002, headers=PCM),
                lambda: http.get(f"/v1/sessions/{bystander}/events", headers={"Last-Event-ID": "x"}),
                lambda: http.post(f"/v1/sessions/{victim}/close"),
                lambda: http.post(f"/v1/sessions/{victim}/audio", content=b"\x00\x00", headers=PCM),
                lambda: http.delete(f"/v1/sessions/{victim}"),
                lambda: http.post("/v1/sessions", json={"chunk_size": [0, 0, 0]}),
            ]
            for i, offset in enumerate(range(0, len(clip), 8000)):
                await client.append(bystander, clip[offset : offset + 8000])
                r = await bad[i % len(bad)]()
                assert r.status_code < 500, r.text
            await client.close(bystander)
            return await asyncio.wait_for(events, 60)

    events = asyncio.run(run())
    assert events[-1].type == "final"
    assert events[-1].data["tokens"] == reference_tokens(model_dir, clip)


def test_openapi_documents_the_api(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path in ["/v1/sessions", "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/audio",
                 "/v1/sessions/{session_id}/close", "/v1/sessions/{session_id}/events", "/healthz", "/readyz"]:
        assert path in paths
    assert "application/octet-stream" in paths["/v1/sessions/{session_id}/audio"]["post"]["requestBody"]["content"]


def test_health_and_metrics(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and len(ready.json()["workers"]) == 2
    assert "parastream_sessions_created_total" in http.get("/metrics").text
