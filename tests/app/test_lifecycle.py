"""Limits and lifecycle: idle eviction, MAX_SESSIONS, full rings, dead workers, shutdown, boot errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.client import ParastreamClient
from benchmarks.common import free_port
from benchmarks.resources import descendants
from tests.audio import synth_speechlike
from tests.harness import CLEAN_EXIT, ROOT, ServiceProcess, alive, segments_of, wait_for
from tests.helpers import PCM, collect
from tests.reference_cache import reference_tokens


@pytest.fixture(scope="module")
def small(tiny_model_dir: Path) -> Iterator[ServiceProcess]:
    """Two workers, 3 sessions at most, 1.5 s idle timeout, 4 s rings, fast pings."""
    settings = dict(
        workers=2, max_sessions=3, session_idle_timeout_s=1.5, ring_seconds=4, max_append_bytes=64_000,
        worker_ping_interval_s=0.2,
    )
    with ServiceProcess(tiny_model_dir, **settings) as svc:
        yield svc
    assert segments_of(svc.pid) == []
    svc.remove_log()


def _children(pid: int) -> set[int]:
    return set(descendants(pid))


def test_idle_session_is_evicted_and_freed(small: ServiceProcess) -> None:
    async def run() -> tuple[list, str]:
        async with ParastreamClient(small.base_url) as client:
            session = await client.create_session()
            events = asyncio.create_task(collect(client, session["id"]))
            await client.append(session["id"], synth_speechlike(1.0, seed=5))
            wait_for(lambda: _worker_sessions(small) == 1, what="the worker to hold the cache")
            assert segments_of(small.pid)
            got = await asyncio.wait_for(events, 20)  # no more audio: the idle timeout closes it
            return got, (await client.http.get(f"/v1/sessions/{session['id']}")).json()["state"]

    events, state = asyncio.run(run())
    assert events[-1].type == "final" and events[-1].data["reason"] == "idle_timeout"
    assert state == "finished"
    assert segments_of(small.pid) == []
    wait_for(lambda: _worker_sessions(small) == 0, what="the worker to free the cache")
    assert all(w["cache_bytes"] == 0 for w in small.workers())


def _worker_sessions(svc: ServiceProcess) -> int:
    return sum(w["worker_sessions"] or 0 for w in svc.workers())


def test_max_sessions_gives_503_with_retry_after(small: ServiceProcess) -> None:
    with httpx.Client(base_url=small.base_url, timeout=30) as http:
        ids = [http.post("/v1/sessions").json()["id"] for _ in range(3)]
        r = http.post("/v1/sessions")
        assert r.status_code == 503 and r.json()["error"]["code"] == "service_full"
        assert int(r.headers["Retry-After"]) >= 1
        http.delete(f"/v1/sessions/{ids[0]}")
        assert http.post("/v1/sessions").status_code == 201  # room again
        for sid in ids[1:]:
            http.delete(f"/v1/sessions/{sid}")


def test_full_ring_gives_429_and_loses_nothing(small: ServiceProcess) -> None:
    with httpx.Client(base_url=small.base_url, timeout=30) as http:
        session = http.post("/v1/sessions").json()
        worker_pid = small.workers()[session["worker"]]["pid"]
        os.kill(worker_pid, signal.SIGSTOP)  # the worker stops reading: the 4 s ring fills
        try:
            two_seconds = b"\x01\x00" * 32_000
            assert http.post(f"/v1/sessions/{session['id']}/audio", content=two_seconds, headers=PCM).status_code == 200
            assert http.post(f"/v1/sessions/{session['id']}/audio", content=two_seconds, headers=PCM).status_code == 200
            r = http.post(f"/v1/sessions/{session['id']}/audio", content=b"\x01\x00", headers=PCM)
            assert r.status_code == 429 and r.json()["error"]["code"] == "buffer_full"
            assert int(r.headers["Retry-After"]) >= 1
            assert http.get(f"/v1/sessions/{session['id']}").json()["samples_received"] == 64_000
        finally:
            os.kill(worker_pid, signal.SIGCONT)
        wait_for(
            lambda: http.post(f"/v1/sessions/{session['id']}/audio", content=two_seconds, headers=PCM).status_code == 200,
            what="room in the ring",
        )
        http.post(f"/v1/sessions/{session['id']}/close")
        wait_for(lambda: http.get(f"/v1/sessions/{session['id']}").json()["state"] == "finished", what="final")
        assert http.get(f"/v1/sessions/{session['id']}").json()["samples_processed"] == 96_000


def test_sigkilled_worker_is_replaced_and_its_session_carried_on(small: ServiceProcess, tiny_model_dir: Path) -> None:
    clip = synth_speechlike(2.0, seed=9)

    async def run() -> tuple[list, list]:
        async with ParastreamClient(small.base_url) as client:
            session = await client.create_session()
            events = asyncio.create_task(collect(client, session["id"]))
            await client.append(session["id"], clip[:16000])
            slot = session["worker"]
            before = small.workers()[slot]
            os.kill(before["pid"], signal.SIGKILL)
            await client.append(session["id"], clip[16000:])  # audio keeps coming while the worker is replaced
            await client.close(session["id"])
            got = await asyncio.wait_for(events, 20)
            wait_for(
                lambda: (w := small.workers()[slot])["ready"] and w["pid"] != before["pid"], what="a replacement"
            )
            after = small.workers()[slot]
            assert after["generation"] == before["generation"] + 1 and after["restarts"] == before["restarts"] + 1
            # The replacement serves new sessions (placement fills the emptier slot first).
            fresh = await client.create_session()
            done = asyncio.create_task(collect(client, fresh["id"]))
            await client.append(fresh["id"], synth_speechlike(1.5, seed=10))
            await client.close(fresh["id"])
            return got, await asyncio.wait_for(done, 20)

    killed, fresh = asyncio.run(run())
    assert killed[-1].type == "final" and killed[-1].data["tokens"] == reference_tokens(tiny_model_dir, clip)
    assert fresh[-1].type == "final"
    assert httpx.get(f"{small.base_url}/readyz").status_code == 200


def test_sigterm_leaves_no_segments_and_no_processes(tiny_model_dir: Path) -> None:
    svc = ServiceProcess(tiny_model_dir, workers=2).start()
    try:
        with httpx.Client(base_url=svc.base_url, timeout=30) as http:
            for _ in range(3):  # open sessions with audio held in their rings
                sid = http.post("/v1/sessions").json()["id"]
                http.post(f"/v1/sessions/{sid}/audio", content=b"\x01\x00" * 5000, headers=PCM)
        assert len(segments_of(svc.pid)) == 3
        descendants = _children(svc.pid)
        assert len(descendants) >= 3  # model host + 2 workers
        assert svc.stop(signal.SIGTERM, timeout=60) in CLEAN_EXIT
        assert segments_of(svc.pid) == []
        wait_for(lambda: not any(alive(p) for p in descendants), timeout=10, what="workers to exit")
    finally:
        svc.__exit__(None, None, None)
        svc.remove_log()



def _serve_expecting_failure(model: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PARASTREAM_MODEL": model, "PARASTREAM_PORT": str(free_port()), "PARASTREAM_WORKERS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    result = _serve_expecting_failure(str(tmp_path / "no-such-model"))
    assert result.returncode == 2
    assert "PARASTREAM_MODEL" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_hub_names_the_setting_and_the_offline_way() -> None:
    if Path.home().joinpath(".cache", "modelscope", "hub").exists() and any(
        "paraformer" in str(p) for p in Path.home().joinpath(".cache", "modelscope", "hub").rglob("*online*")
    ):
        pytest.skip("a local ModelScope copy of the real model exists here")
    result = _serve_expecting_failure("paraformer-zh-streaming")
    assert result.returncode == 2
    assert "PARASTREAM_MODEL" in result.stderr and "make-model tiny-random" in result.stderr
    assert "Traceback" not in result.stderr
