"""Metrics and logs (issue 14; docs/operations.md lists every metric): each metric moves when its event happens, and
PARASTREAM_LOG_FORMAT=json gives JSON lines that name the session and protocol they are about and hold no audio,
transcript, hotword or key.

The shared services run other tests' sessions too, so these read a metric, cause the event, and read it again; an
open gauge is compared with itself while the session is open and after it ended (sessions of earlier tests only end
meanwhile, none begins)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.audio import synth_sentences, synth_speechlike
from tests.harness import CLEAN_EXIT, ServiceProcess, segments_of, wait_for
from tests.helpers import PCM

RING_BYTES = 30 * 16000 * 2  # a default ring's audio (PARASTREAM_RING_SECONDS=30), without its 64-byte header
KEY, ADMIN = "metrics-test-key-5f2c9e", "metrics-test-admin-77d1a0"

Snapshot = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str) -> Snapshot:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(snapshot: Snapshot, name: str, **labels: str) -> float:
    """One sample; 0 when it was never set (a label value not seen yet)."""
    return snapshot.get((name, frozenset(labels.items())), 0.0)


def moved(before: Snapshot, after: Snapshot, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def wait_session(http: httpx.Client, session_id: str, **expected: Any) -> dict[str, Any]:
    info: dict[str, Any] = {}

    def done() -> bool:
        info.update(http.get(f"/v1/sessions/{session_id}").json())
        return all(info.get(k) == v for k, v in expected.items())

    wait_for(done, 30, f"session {session_id} to reach {expected}")
    return info


def test_a_rest_session_moves_the_session_latency_and_memory_metrics(service: ServiceProcess) -> None:
    body = synth_speechlike(2.0, seed=141).astype("<i2").tobytes()
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        before = scrape(service.base_url)
        sid = http.post("/v1/sessions", json={"mode": "online"}).json()["id"]
        worker = str(http.get(f"/v1/sessions/{sid}").json()["worker"])
        for start in range(0, len(body), 16_000):  # four appends of 0.5 s
            assert http.post(f"/v1/sessions/{sid}/audio", content=body[start : start + 16_000], headers=PCM).is_success
        wait_session(http, sid, samples_processed=32_000 - 32_000 % 9600)  # three full strides
        during = scrape(service.base_url)
        http.post(f"/v1/sessions/{sid}/close")
        info = wait_session(http, sid, state="finished")
        after = scrape(service.base_url)

    open_by_kind = {"mode": "online", "protocol": "rest"}
    assert value(during, "parastream_sessions_open_by_protocol", **open_by_kind) >= 1
    assert value(after, "parastream_sessions_open_by_protocol", **open_by_kind) <= (
        value(during, "parastream_sessions_open_by_protocol", **open_by_kind) - 1
    )
    assert value(during, "parastream_worker_sessions_open", worker=worker) >= 1
    assert value(after, "parastream_worker_sessions_open", worker=worker) <= (
        value(during, "parastream_worker_sessions_open", worker=worker) - 1
    )
    assert value(during, "parastream_sessions_open") >= 1
    # Its ring (and its snapshots) while open; all of it freed at the end.
    assert value(during, "parastream_shared_memory_bytes") >= RING_BYTES
    assert value(after, "parastream_shared_memory_bytes") <= value(during, "parastream_shared_memory_bytes") - RING_BYTES
    # Every append is timed; every full stride gives a real-time factor; a partial with tokens, its latency.
    assert moved(before, after, "parastream_append_latency_seconds_count") == 4
    assert moved(before, after, "parastream_real_time_factor_count") >= 3
    assert 0 < moved(before, after, "parastream_real_time_factor_sum") < 3 * 10  # a tiny model: well under 10 each
    partials = moved(before, after, "parastream_partial_latency_seconds_count")
    assert info["tokens"] > 0 and partials >= 1
    assert 0 < moved(before, after, "parastream_partial_latency_seconds_sum") < partials * 5


def test_a_2pass_session_moves_the_sentence_latency(twopass_service: ServiceProcess) -> None:
    body = synth_sentences([1.5, 1.5], seed=142).astype("<i2").tobytes()
    with httpx.Client(base_url=twopass_service.base_url, timeout=30) as http:
        before = scrape(twopass_service.base_url)
        sid = http.post("/v1/sessions", json={"mode": "2pass"}).json()["id"]
        during = scrape(twopass_service.base_url)
        for start in range(0, len(body), 32_000):
            assert http.post(f"/v1/sessions/{sid}/audio", content=body[start : start + 32_000], headers=PCM).is_success
        http.post(f"/v1/sessions/{sid}/close")
        info = wait_session(http, sid, state="finished")
        after = scrape(twopass_service.base_url)
    assert value(during, "parastream_sessions_open_by_protocol", mode="2pass", protocol="rest") >= 1
    assert info["sentences"] >= 1
    assert moved(before, after, "parastream_sentence_latency_seconds_count") == info["sentences"]
    assert 0 < moved(before, after, "parastream_sentence_latency_seconds_sum") < 5 * info["sentences"]


def test_websocket_connections_are_counted_by_protocol(service: ServiceProcess) -> None:
    ws_base = service.base_url.replace("http://", "ws://", 1)

    async def hold(url: str, first: dict[str, Any] | None) -> tuple[Snapshot, Snapshot]:
        async with websockets.connect(url) as ws:
            if first is not None:
                await ws.send(json.dumps(first))
            else:
                await asyncio.wait_for(ws.recv(), 10)  # session.created: the server is in the connection
            during = await asyncio.to_thread(scrape, service.base_url)
        return during, await asyncio.to_thread(scrape, service.base_url)

    for protocol, url, first in [
        ("funasr_ws", f"{ws_base}/", {"mode": "online", "is_speaking": True}),
        ("openai_realtime", f"{ws_base}/v1/realtime?intent=transcription", None),
    ]:
        before = scrape(service.base_url)
        during, _ = asyncio.run(hold(url, first))
        assert moved(before, during, "parastream_websocket_connections_total", protocol=protocol) == 1
        assert value(during, "parastream_websocket_connections_open", protocol=protocol) >= 1
        wait_for(
            lambda: value(scrape(service.base_url), "parastream_websocket_connections_open", protocol=protocol)
            <= value(during, "parastream_websocket_connections_open", protocol=protocol) - 1,
            10,
            f"the {protocol} connection to be counted closed",
        )


def test_a_too_large_append_is_a_rejected_request(service: ServiceProcess) -> None:
    with httpx.Client(base_url=service.base_url, timeout=30) as http:
        sid = http.post("/v1/sessions", json={}).json()["id"]
        before = scrape(service.base_url)
        answer = http.post(f"/v1/sessions/{sid}/audio", content=bytes(64_002), headers=PCM)  # over 64 kB
        after = scrape(service.base_url)
        http.delete(f"/v1/sessions/{sid}")
    assert answer.status_code == 413
    assert moved(before, after, "parastream_rejected_requests_total", reason="payload_too_large") == 1


def test_json_logs_backpressure_and_refusals(model_dir: Path) -> None:
    """One worker, keys set, JSON logs. A stopped worker shows as queue depth and strides behind, and a full ring as
    buffer_full; a full service, and a request without a key, are rejected requests too. Then the log: every line a
    JSON object, every line about one of its sessions names it and its protocol, and nothing the client sent or got
    (audio, text, hotwords, keys) is in it."""
    settings = dict(
        workers=1, log_format="json", api_keys=KEY, admin_keys=ADMIN, metrics_public="true", max_sessions=3
    )
    hotwords = "甲乙丙 丁戊"
    pcm = synth_speechlike(20.0, seed=143).astype("<i2")
    body = pcm.tobytes()
    with ServiceProcess(model_dir, **settings) as svc:
        ws_base = svc.base_url.replace("http://", "ws://", 1)
        with httpx.Client(base_url=svc.base_url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as http:
            worker_pid = httpx.get(
                f"{svc.base_url}/v1/workers", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
            ).json()[0]["pid"]
            sid = http.post("/v1/sessions", json={"mode": "online", "hotwords": hotwords}).json()["id"]
            before = scrape(svc.base_url)
            os.kill(worker_pid, signal.SIGSTOP)  # it computes nothing until SIGCONT: the audio waits in the ring
            try:
                assert http.post(f"/v1/sessions/{sid}/audio", content=body, headers=PCM).is_success  # 20 s
                full = http.post(f"/v1/sessions/{sid}/audio", content=body, headers=PCM)  # 40 s > the 30 s ring
                stopped = scrape(svc.base_url)
            finally:
                os.kill(worker_pid, signal.SIGCONT)
            assert full.status_code == 429
            assert moved(before, stopped, "parastream_rejected_requests_total", reason="buffer_full") == 1
            assert value(stopped, "parastream_worker_queue_depth", worker="0") == 1
            assert value(stopped, "parastream_worker_strides_behind", worker="0") == len(pcm) // 9600
            wait_session(http, sid, samples_processed=len(pcm) // 9600 * 9600)
            caught_up = scrape(svc.base_url)
            assert value(caught_up, "parastream_worker_queue_depth", worker="0") == 0
            assert value(caught_up, "parastream_worker_strides_behind", worker="0") == 0
            http.post(f"/v1/sessions/{sid}/close")
            info = wait_session(http, sid, state="finished")

            # A FunASR WebSocket utterance, the key in the URL as FunASR's clients send it.
            async def utterance() -> list[dict[str, Any]]:
                async with websockets.connect(f"{ws_base}/?api_key={KEY}") as ws:
                    await ws.send(json.dumps({"mode": "online", "hotwords": hotwords, "wav_name": "w", "is_speaking": True}))
                    await ws.send(body[:64_000])
                    await ws.send(json.dumps({"is_speaking": False}))
                    messages: list[dict[str, Any]] = []
                    while not messages or not messages[-1].get("is_final"):
                        messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
                    return messages

            messages = asyncio.run(utterance())
            assert "error" not in messages[-1], messages[-1]

            # Refusals: a full service (3 sessions), and, once keys are enforced, a request without one.
            open_ids = [http.post("/v1/sessions", json={}).json()["id"] for _ in range(3)]
            before = scrape(svc.base_url)
            assert http.post("/v1/sessions", json={}).status_code == 503
            keyless = httpx.post(f"{svc.base_url}/v1/sessions", json={}, timeout=10)
            after = scrape(svc.base_url)
            unauthorized = moved(before, after, "parastream_rejected_requests_total", reason="unauthorized")
            assert keyless.status_code in (401, 503)  # 503 without keys enforced: one more session too many
            assert moved(before, after, "parastream_rejected_requests_total", reason="service_full") == (
                1 if keyless.status_code == 401 else 2
            )
            for open_id in open_ids:
                http.delete(f"/v1/sessions/{open_id}")
    assert svc.proc is not None and svc.proc.returncode in CLEAN_EXIT
    assert segments_of(svc.pid) == []

    log = svc.log(tail=1 << 30)
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "message"} <= line.keys() for line in lines)
    assert any(line["message"] == "Application shutdown complete." for line in lines)
    ws_sessions = {
        line["session"] for line in lines if line.get("protocol") == "funasr_ws" and "session" in line
    }
    assert len(ws_sessions) == 1
    for session_id, protocol in [(sid, "rest"), (ws_sessions.pop(), "funasr_ws"), *((i, "rest") for i in open_ids)]:
        about = [line for line in lines if session_id in line["message"]]
        assert about and all(line.get("session") == session_id for line in about), about
        assert all(line.get("protocol") == protocol for line in about), about
    access = [line for line in lines if line["logger"] == "uvicorn.access" and f"/v1/sessions/{sid}/audio" in line["message"]]
    assert len(access) == 2 and all(line.get("protocol") == "rest" for line in access)
    # Nothing the client sent or got back.
    texts = {info["text"], *info["text"], *(m["text"] for m in messages)}
    secrets = [KEY, ADMIN, hotwords, *hotwords.split(), *(t for t in texts if not t.isascii() or len(t) >= 4)]
    secrets += [body[:24].hex(), base64.b64encode(body[:24]).decode()]
    leaked = [s for s in secrets if s and s in log]
    assert not leaked, leaked
    assert not re.search(r"[\u4e00-\u9fff]", log)  # no CJK at all: every token of these models is one
    svc.remove_log()
    # An auth failure is a rejected request too (app/auth.py counts it with metrics.reject("unauthorized")).
    assert unauthorized == (1 if keyless.status_code == 401 else 0)
