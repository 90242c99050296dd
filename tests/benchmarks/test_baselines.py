"""The baseline servers (benchmarks/baselines/) speak Parastream's HTTP/SSE contract.

Sequential mode must be exact (token for token FunASR's own in-process loop). Threads mode shares one AutoModel
between sessions and may give wrong text (FunASR's shared ``self.kwargs``, the point of the baseline), so it is
only required to end every session with a ``final`` or an ``error`` event. The C++-runtime-style server over
FunASR's exported fp32 graphs must equal FunASR's loop at look-back 0/0 (what those graphs compute); its int8 twin
computes a different function, so it must only end every session cleanly. All must stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.client import ParastreamClient, TranscriptEvent
from engine.messages import StreamOptions
from tests.audio import synth_speechlike
from tests.harness import CLEAN_EXIT, ROOT, free_port
from tests.reference_cache import reference_tokens

STRIDE = 9600
# ~3 s each; the endings differ: an exact stride multiple (empty final call), a short tail, a long tail.
CLIP_SAMPLES = [5 * STRIDE, 5 * STRIDE + 500, 4 * STRIDE + 8000]
ONNX_ONE_CHUNK_TAIL = 5 * 960  # funasr-onnx encodes a final piece of up to chunk_size[2] LFR frames as one chunk
TORCH = ("benchmarks.baselines.funasr_server", "--ncpu", "1")
ONNX = ("benchmarks.baselines.funasr_onnx_server", "--threads", "2")
SERVERS = {
    "sequential": (*TORCH, "--mode", "sequential"),
    "threads": (*TORCH, "--mode", "threads"),
    "onnx-fp32": ONNX,
    "onnx-int8": (*ONNX, "--quantize"),
}


class Baseline:
    def __init__(self, mode: str, model_dir: Path) -> None:
        self.mode = mode
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_file = tempfile.NamedTemporaryFile(prefix=f"baseline-{mode}-", suffix=".log", delete=False)
        module, *args = SERVERS[mode]
        args += ["--model", str(model_dir), "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a test's signals never reach pytest
        )

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")[-20000:]

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.mode} baseline exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.mode} baseline not ready:\n{self.log()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        Path(self.log_file.name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def baselines(tiny_model_dir: Path) -> Iterator[dict[str, Baseline]]:
    # Both start at once, so their ~8 s funasr imports overlap (and with the reference computed meanwhile).
    servers = {mode: Baseline(mode, tiny_model_dir) for mode in SERVERS}
    try:
        deadline = time.monotonic() + 120
        for server in servers.values():
            server.wait_ready(deadline)
        yield servers
    finally:
        for server in servers.values():
            server.kill()


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [synth_speechlike(n / 16000, seed=300 + i) for i, n in enumerate(CLIP_SAMPLES)]


async def _stream(client: ParastreamClient, session_id: str, pcm: np.ndarray, rng: random.Random) -> None:
    pos = 0
    while pos < len(pcm):
        n = rng.randint(1, 16_000)  # pieces of 1 sample up to 1 s, so strides straddle appends
        await client.append(session_id, pcm[pos : pos + n])
        pos += n
        await asyncio.sleep(rng.uniform(0, 0.01))  # interleave the sessions
    await client.close(session_id)


async def _run_sessions(base_url: str, clips: list[np.ndarray]) -> list[list[TranscriptEvent]]:
    async with ParastreamClient(base_url) as client:
        sessions = [await client.create_session(sample_rate=16000) for _ in clips]
        assert all(s["worker"] == 0 and len(s["id"]) == 32 for s in sessions)
        # Subscribe before the first append; the first session also asks for progress events.
        watchers = [
            asyncio.create_task(_collect(client, s["id"], progress=i == 0)) for i, s in enumerate(sessions)
        ]
        await asyncio.sleep(0.05)
        await asyncio.gather(
            *(_stream(client, s["id"], clip, random.Random(i)) for i, (s, clip) in enumerate(zip(sessions, clips)))
        )
        return await asyncio.wait_for(asyncio.gather(*watchers), 60)


async def _collect(client: ParastreamClient, session_id: str, progress: bool) -> list[TranscriptEvent]:
    return [event async for event in client.events(session_id, progress=progress)]


@pytest.mark.parametrize(("mode", "look_back"), [("sequential", (4, 1)), ("onnx-fp32", (0, 0))])
def test_exact_modes_match_funasr_reference(
    baselines: dict[str, Baseline], clips: list[np.ndarray], tiny_model_dir: Path, mode: str, look_back: tuple[int, int]
) -> None:
    options = StreamOptions(encoder_chunk_look_back=look_back[0], decoder_chunk_look_back=look_back[1])
    expected = [reference_tokens(tiny_model_dir, clip, options) for clip in clips]
    server = baselines[mode]
    results = asyncio.run(_run_sessions(server.base_url, clips))
    for clip, want, events in zip(clips, expected, results):
        numbered = [e for e in events if e.type != "progress"]
        assert [e.id for e in numbered] == list(range(1, len(numbered) + 1))
        final = events[-1]
        assert final.type == "final", events[-1]
        assert final.data["reason"] == "closed"
        assert final.data["samples_processed"] == len(clip)
        processed = [e.data["samples_processed"] for e in events]
        assert processed == sorted(processed)
        partials = [e for e in numbered if e.type == "partial"]
        # Every whole stride equals FunASR's loop; so does the end, except where funasr-onnx ends a stream its own
        # way (a tail of more than 5 LFR frames is encoded as two chunks; see funasr_onnx_server's docstring).
        strides = [t for e in partials if e.data["samples_processed"] < len(clip) for t in e.data["tokens"]]
        assert strides and strides == want[: len(strides)]
        if mode == "onnx-fp32" and len(clip) % STRIDE > ONNX_ONE_CHUNK_TAIL:
            assert final.data["tokens"][: len(strides)] == strides
            continue
        assert final.data["tokens"] == want
        assert final.data["text"] == "".join(want)
        assert [t for e in partials for t in e.data["tokens"]] == want
    stats = httpx.get(f"{server.base_url}/stats").json()
    assert stats == {"generate_errors": 0, "sessions": len(clips)}


@pytest.mark.parametrize("mode", ["threads", "onnx-int8"])
def test_inexact_modes_end_every_session(baselines: dict[str, Baseline], clips: list[np.ndarray], mode: str) -> None:
    server = baselines[mode]
    results = asyncio.run(_run_sessions(server.base_url, clips))
    # No equality check: one AutoModel shared by threads may decode with another session's cache, and the int8
    # graph is not the function any FunASR loop computes.
    ends = [events[-1].type for events in results]
    if mode == "onnx-int8":  # per-stream state: nothing to go wrong between sessions
        assert ends == ["final"] * len(clips), ends
    assert all(end in ("final", "error") for end in ends), ends
    stats = httpx.get(f"{server.base_url}/stats").json()
    assert stats == {"generate_errors": ends.count("error"), "sessions": len(clips)}


def test_contract_errors(baselines: dict[str, Baseline]) -> None:
    base = baselines["sequential"].base_url
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.post(f"{base}/v1/sessions", json={"sample_rate": 8000}).status_code == 422
    assert httpx.post(f"{base}/v1/sessions/nope/audio", content=b"\0\0").status_code == 404
    sid = httpx.post(f"{base}/v1/sessions").json()["id"]
    assert httpx.post(f"{base}/v1/sessions/{sid}/audio", content=b"\0").status_code == 400
    assert httpx.post(f"{base}/v1/sessions/{sid}/close").status_code == 200
    assert httpx.post(f"{base}/v1/sessions/{sid}/close").status_code == 200  # closing twice is harmless
    assert httpx.post(f"{base}/v1/sessions/{sid}/audio", content=b"\0\0").status_code == 409


def test_every_mode_stops_cleanly_on_sigterm(baselines: dict[str, Baseline]) -> None:
    for server in baselines.values():
        server.proc.send_signal(signal.SIGTERM)
    for server in baselines.values():
        assert server.proc.wait(30) in CLEAN_EXIT, server.log()
        assert "Application shutdown complete" in server.log()
