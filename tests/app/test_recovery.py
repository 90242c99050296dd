"""Crash recovery, safe retries, drain and clean-up: no audio lost, no text changed."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.client import ParastreamClient, TranscriptEvent
from engine.ring import list_segments
from tests.audio import synth_speechlike
from tests.harness import CLEAN_EXIT, ServiceProcess, alive, segments_of, wait_for
from tests.helpers import PCM, assert_clean_log, collect, metric, stream_in_pieces, until
from tests.reference_cache import reference_tokens


@pytest.mark.parametrize("backend", ["auto", "torch"])  # the default (the encoder on ONNX Runtime) and the reference
def test_sigkilled_workers_mid_stream_change_nothing(model_dir: Path, backend: str) -> None:
    """Two workers, 8 sessions in random splits; worker 0 is SIGKILLed mid-stream, then worker 1."""
    clips = [synth_speechlike(s, seed=300 + i) for i, s in enumerate([6.0, 5.3, 7.1, 4.4, 6.6, 5.0, 7.7, 4.9])]
    rng = random.Random(4)
    settings = dict(workers=2, max_append_bytes=64_000, worker_ping_interval_s=0.2, backend=backend)
    with ServiceProcess(model_dir, **settings) as svc:

        async def killer() -> list[int]:
            killed = []
            for slot in (0, 1):
                await asyncio.sleep(rng.uniform(0.4, 1.0))
                workers = (await asyncio.to_thread(svc.workers))
                pid = workers[slot]["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                await asyncio.to_thread(
                    wait_for, lambda: svc.workers()[slot]["ready"] and svc.workers()[slot]["pid"] != pid, 60
                )
            return killed

        async def run() -> tuple[list[list[TranscriptEvent]], list[int]]:
            async with ParastreamClient(svc.base_url) as client:
                sessions = [(await client.create_session())["id"] for _ in clips]
                watchers = [asyncio.create_task(collect(client, sid)) for sid in sessions]
                kills = asyncio.create_task(killer())
                # Pieces of up to 2 s at twice real time: ~3 s a session, so the kills land mid-stream.
                await asyncio.gather(
                    *(
                        stream_in_pieces(client, sid, c, random.Random(i), max_piece=32_000, speed=2.0)
                        for i, (sid, c) in enumerate(zip(sessions, clips))
                    )
                )
                results = await asyncio.wait_for(asyncio.gather(*watchers), 120)
                return results, await kills

        results, killed = asyncio.run(run())
        assert len(killed) == 2
        for clip, events in zip(clips, results):
            assert_clean_log(events, reference_tokens(model_dir, clip))
        assert metric(svc.base_url, "parastream_sessions_restored_total") >= 2  # each kill hit sessions that were carried over
    assert segments_of(svc.pid) == []
    svc.remove_log()


@pytest.fixture(scope="module")
def one_worker(model_dir: Path) -> Iterator[ServiceProcess]:
    """One worker, shared by the tests that need nothing else of a service but what the stalled-subscriber test
    sets: a 1 s SSE send timeout, 620 s rings, 20 MB appends and a 16 KB kernel send buffer."""
    settings = dict(workers=1, sse_send_timeout_s=1, ring_seconds=620, max_append_bytes=20_000_000, send_buffer_bytes=16384)
    with ServiceProcess(model_dir, **settings) as svc:
        yield svc
    assert segments_of(svc.pid) == []
    svc.remove_log()


def test_retried_append_is_idempotent_and_gaps_are_refused(one_worker: ServiceProcess, model_dir: Path) -> None:
    clip = synth_speechlike(3.0, seed=77)
    with httpx.Client(base_url=one_worker.base_url, timeout=30) as http:
        sid = http.post("/v1/sessions").json()["id"]
        url = f"/v1/sessions/{sid}/audio"
        a, b, c = clip[:20000], clip[20000:30000], clip[30000:]
        assert http.post(url, params={"offset": 0}, content=a.tobytes(), headers=PCM).json()["samples_received"] == 20000
        # The same append again (a retry after a lost answer): acknowledged, not applied twice.
        again = http.post(url, params={"offset": 0}, content=a.tobytes(), headers=PCM)
        assert again.status_code == 200 and again.json()["samples_received"] == 20000
        # An append past the end would leave a hole: refused with the offset to send from.
        gap = http.post(url, params={"offset": 30000}, content=c.tobytes(), headers=PCM)
        assert gap.status_code == 409
        assert gap.json()["error"]["code"] == "offset_gap" and gap.json()["error"]["expected_offset"] == 20000
        # A retry that overlaps: only the new tail is taken.
        overlap = np.concatenate([a[-5000:], b])
        r = http.post(url, params={"offset": 15000}, content=overlap.tobytes(), headers=PCM)
        assert r.json()["samples_received"] == 30000
        http.post(url, params={"offset": 30000}, content=c.tobytes(), headers=PCM)
        http.post(f"/v1/sessions/{sid}/close")
        wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["state"] == "finished", what="final")
        replay = http.get(f"/v1/sessions/{sid}/events").text  # the whole log, the final last
        final = json.loads([line for line in replay.splitlines() if line.startswith("data:")][-1][5:])
        assert http.get(f"/v1/sessions/{sid}").json()["samples_received"] == len(clip)
        assert final["tokens"] == reference_tokens(model_dir, clip)
        # A retry after close that repeats received audio is still just acknowledged.
        assert http.post(url, params={"offset": 0}, content=a.tobytes(), headers=PCM).status_code == 200
        assert http.post(url, params={"offset": -1}, content=a.tobytes(), headers=PCM).status_code == 422


def test_boot_failure_loop_halts_the_slot_and_moves_its_sessions(model_dir: Path, tmp_path: Path) -> None:
    fail_file = tmp_path / "fail-boot"
    clips = [synth_speechlike(4.0, seed=500 + i) for i in range(4)]
    svc = ServiceProcess(model_dir, workers=2, worker_ping_interval_s=0.2, max_boot_failures=3)
    svc.env["PARASTREAM_TEST_FAIL_BOOT_FILE"] = str(fail_file)
    with svc:

        async def run() -> tuple[list[list[TranscriptEvent]], dict]:
            async with ParastreamClient(svc.base_url) as client:
                sessions = [(await client.create_session())["id"] for _ in clips]
                watchers = [asyncio.create_task(collect(client, sid)) for sid in sessions]
                for sid, clip in zip(sessions, clips):
                    await client.append(sid, clip[:32000])
                fail_file.touch()  # from now on every new worker dies while booting
                os.kill(svc.workers()[0]["pid"], signal.SIGKILL)
                await asyncio.to_thread(wait_for, lambda: svc.workers()[0]["halted"], 60, "slot 0 halted")
                ready = httpx.get(f"{svc.base_url}/readyz")
                for sid, clip in zip(sessions, clips):
                    await client.append(sid, clip[32000:])
                    await client.close(sid)
                return await asyncio.wait_for(asyncio.gather(*watchers), 60), ready

        results, ready = asyncio.run(run())
        assert ready.status_code == 503 and "PARASTREAM_MAX_BOOT_FAILURES" in ready.json()["reason"]
        for clip, events in zip(clips, results):  # slot 0's sessions moved to slot 1 and came out exact
            assert_clean_log(events, reference_tokens(model_dir, clip))
        assert "failed to boot 3 times" in svc.log()

        # Now the last healthy worker dies too: its sessions end with a clear error.
        async def orphaned() -> list[TranscriptEvent]:
            async with ParastreamClient(svc.base_url) as client:
                sid = (await client.create_session())["id"]
                watcher = asyncio.create_task(collect(client, sid))
                await client.append(sid, clips[0][:20000])
                os.kill(svc.workers()[1]["pid"], signal.SIGKILL)
                return await asyncio.wait_for(watcher, 60)

        events = asyncio.run(orphaned())
        assert events[-1].type == "error" and events[-1].data["code"] == "worker_died"
        assert "no healthy worker" in events[-1].data["message"]
    svc.remove_log()


def test_sigterm_drains_then_exits_within_grace(model_dir: Path) -> None:
    with ServiceProcess(model_dir, workers=1, shutdown_grace_s=8) as svc:
        closed_clip, open_clip = synth_speechlike(3.0, seed=61), synth_speechlike(3.3, seed=62)

        async def run() -> tuple[list[TranscriptEvent], list[TranscriptEvent], float, int]:
            async with ParastreamClient(svc.base_url) as client:
                closed = (await client.create_session())["id"]
                still_open = (await client.create_session())["id"]
                w_closed = asyncio.create_task(collect(client, closed))
                w_open = asyncio.create_task(collect(client, still_open))
                worker = svc.workers()[0]["pid"]
                os.kill(worker, signal.SIGSTOP)  # hold the work back so the drain has something to finish
                await client.append(closed, closed_clip)
                await client.close(closed)
                await client.append(still_open, open_clip)
                svc.proc.send_signal(signal.SIGTERM)

                async def draining() -> bool:  # /readyz turns 503 once the drain has begun
                    return (await client.http.get("/readyz")).status_code == 503

                await until(draining, 10, "the drain to begin")
                refused = (await client.http.post("/v1/sessions")).status_code
                os.kill(worker, signal.SIGCONT)
                started = time.monotonic()
                a, b = await asyncio.wait_for(asyncio.gather(w_closed, w_open), 30)
                return a, b, started, refused

        closed_events, open_events, started, refused = asyncio.run(run())
        code = svc.proc.wait(15)
        assert code in CLEAN_EXIT and time.monotonic() - started < 8 + 5
        assert refused == 503  # no new sessions while draining
        assert_clean_log(closed_events, reference_tokens(model_dir, closed_clip))
        assert open_events[-1].type == "error" and open_events[-1].data["code"] == "shutdown"
        # Every full stride received before SIGTERM was transcribed before the error.
        received_strides = len(open_clip) // 9600
        partial_tokens = [t for e in open_events if e.type == "partial" for t in e.data["tokens"]]
        assert f"up to sample {received_strides * 9600}" in open_events[-1].data["message"]
        assert partial_tokens == reference_tokens(model_dir, open_clip[: received_strides * 9600])[: len(partial_tokens)]
    assert segments_of(svc.pid) == []
    svc.remove_log()


def test_api_process_sigkilled_leaves_no_orphans_and_next_start_cleans(model_dir: Path) -> None:
    svc = ServiceProcess(model_dir, workers=2).start()
    with httpx.Client(base_url=svc.base_url, timeout=30) as http:
        for _ in range(2):
            sid = http.post("/v1/sessions").json()["id"]
            http.post(f"/v1/sessions/{sid}/audio", content=b"\x01\x00" * 30000, headers=PCM)
    children = [w["pid"] for w in svc.workers()]
    left = segments_of(svc.pid)
    assert len(left) >= 2
    os.kill(svc.pid, signal.SIGKILL)  # no shutdown code runs in the API process
    svc.proc.wait(10)
    wait_for(lambda: not any(alive(p) for p in children), 15, "workers to notice and exit")
    assert set(left) <= set(list_segments())  # nobody was left to unlink them...
    with ServiceProcess(model_dir, workers=1) as second:  # ...until the next start
        assert not any(name in list_segments() for name in left)
    second.remove_log()
    svc.__exit__(None, None, None)
    svc.remove_log()



def test_stalled_subscriber_is_cut_off_and_resumes(one_worker: ServiceProcess) -> None:
    """A subscriber that stops reading holds no queue: the send timeout drops it, and Last-Event-ID resumes it."""
    # 1000 strides of partials (~200 KB of events) overrun what sits between the server and a client that reads
    # nothing: asyncio's 64 KB write buffer, a 16 KB kernel send buffer (PARASTREAM_SEND_BUFFER_BYTES; the autotuned
    # one would hide megabytes) and the client's 4 KB window.
    clip = synth_speechlike(600.0, seed=88)
    svc = one_worker
    with httpx.Client(base_url=svc.base_url, timeout=60) as http:
        sid = http.post("/v1/sessions").json()["id"]
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: it sets the TCP window
        stalled.connect(("127.0.0.1", svc.port))
        stalled.sendall(f"GET /v1/sessions/{sid}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        http.post(f"/v1/sessions/{sid}/audio", content=clip.tobytes(), headers=PCM)
        http.post(f"/v1/sessions/{sid}/close")
        wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["state"] == "finished", 120, "final")
        time.sleep(2.5)  # past the send timeout
        stalled.settimeout(10)
        received = b""
        while chunk := stalled.recv(65536):  # what was buffered, then the server's close
            received += chunk
        stalled.close()
        assert b"event: final" not in received, len(received)  # it was cut off before the end...
        ids = [int(line.split(b":")[1]) for line in received.splitlines() if line.startswith(b"id:")]
        resumed = http.get(f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": str(ids[-1])}).text
        assert "event: final" in resumed  # ...and picks up where it stopped
        first_resumed = int(next(l for l in resumed.splitlines() if l.startswith("id:")).split(":")[1])
        assert first_resumed == ids[-1] + 1


def test_resume_past_retained_history_says_so(model_dir: Path) -> None:
    clip = synth_speechlike(8.0, seed=99)
    with ServiceProcess(model_dir, workers=1, event_history=3) as svc, httpx.Client(base_url=svc.base_url, timeout=30) as http:
        sid = http.post("/v1/sessions").json()["id"]
        http.post(f"/v1/sessions/{sid}/audio", content=clip.tobytes(), headers=PCM)
        http.post(f"/v1/sessions/{sid}/close")
        wait_for(lambda: http.get(f"/v1/sessions/{sid}").json()["state"] == "finished", 30, "final")
        total = http.get(f"/v1/sessions/{sid}").json()["events"]
        assert total > 6
        text = http.get(f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": "1"}).text
        assert text.startswith("event: gap") and '"history_lost"' in text
        ids = [int(l.split(":")[1]) for l in text.splitlines() if l.startswith("id:")]
        assert ids == list(range(ids[0], total + 1)) and ids[0] > 2 and "event: final" in text
    svc.remove_log()
