"""The baseline servers (benchmarks/baselines/) speak Parastream's HTTP/SSE contract.

Sequential mode must be exact (token for token FunASR's own in-process loop). Threads mode shares one AutoModel
between sessions and may give wrong text (FunASR's shared ``self.kwargs``, the point of the baseline), so it is
only required to end every session with a ``final`` or an ``error`` event. The C++-runtime-style server over
FunASR's exported fp32 graphs must equal FunASR's loop at look-back 0/0 (what those graphs compute); its int8 twin
computes a different function, so it must only end every session cleanly. All must stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.client import ParastreamClient, TranscriptEvent
from benchmarks.common import ServerProcess, free_port
from engine.messages import StreamOptions
from tests.audio import synth_speechlike
from tests.harness import CLEAN_EXIT
from tests.helpers import stream_in_pieces, subscribed
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


def _start(mode: str, model_dir: Path) -> ServerProcess:
    module, *args = SERVERS[mode]
    port = free_port()
    argv = [sys.executable, "-m", module, *args, "--model", str(model_dir), "--port", str(port)]
    return ServerProcess(argv, port=port, name=f"{mode}-baseline").start(wait=False)


@pytest.fixture(scope="module")
def baselines(tiny_model_dir: Path) -> Iterator[dict[str, ServerProcess]]:
    # All start at once, so their ~8 s funasr imports overlap (and with the reference computed meanwhile).
    servers: dict[str, ServerProcess] = {}
    try:
        for mode in SERVERS:
            servers[mode] = _start(mode, tiny_model_dir)
        deadline = time.monotonic() + 120
        for server in servers.values():
            server.wait_ready(max(0.0, deadline - time.monotonic()))
        yield servers
    finally:
        for server in servers.values():
            server.kill()
            server.remove_log()


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [synth_speechlike(n / 16000, seed=300 + i) for i, n in enumerate(CLIP_SAMPLES)]


async def _run_sessions(base_url: str, clips: list[np.ndarray]) -> list[list[TranscriptEvent]]:
    async with ParastreamClient(base_url) as client:
        sessions = [await client.create_session(sample_rate=16000) for _ in clips]
        assert all(s["worker"] == 0 and len(s["id"]) == 32 for s in sessions)
        # Subscribed before the first append; the first session also asks for progress events.
        watchers = [await subscribed(client, s["id"], progress=i == 0) for i, s in enumerate(sessions)]
        # Pieces of 1 sample up to 1 s, so strides straddle appends; a pause of up to 10 ms interleaves the sessions.
        await asyncio.gather(
            *(
                stream_in_pieces(client, s["id"], clip, random.Random(i), jitter_s=0.01)
                for i, (s, clip) in enumerate(zip(sessions, clips))
            )
        )
        return await asyncio.wait_for(asyncio.gather(*watchers), 60)


@pytest.mark.parametrize(("mode", "look_back"), [("sequential", (4, 1)), ("onnx-fp32", (0, 0))])
def test_exact_modes_match_funasr_reference(
    baselines: dict[str, ServerProcess], clips: list[np.ndarray], tiny_model_dir: Path, mode: str, look_back: tuple[int, int]
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
def test_inexact_modes_end_every_session(baselines: dict[str, ServerProcess], clips: list[np.ndarray], mode: str) -> None:
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


def test_contract_errors(baselines: dict[str, ServerProcess]) -> None:
    base = baselines["sequential"].base_url
    assert httpx.get(f"{base}/healthz").status_code == 200
    assert httpx.post(f"{base}/v1/sessions", json={"sample_rate": 8000}).status_code == 422
    assert httpx.post(f"{base}/v1/sessions/nope/audio", content=b"\0\0").status_code == 404
    sid = httpx.post(f"{base}/v1/sessions").json()["id"]
    assert httpx.post(f"{base}/v1/sessions/{sid}/audio", content=b"\0").status_code == 400
    assert httpx.post(f"{base}/v1/sessions/{sid}/close").status_code == 200
    assert httpx.post(f"{base}/v1/sessions/{sid}/close").status_code == 200  # closing twice is harmless
    assert httpx.post(f"{base}/v1/sessions/{sid}/audio", content=b"\0\0").status_code == 409


def test_every_mode_stops_cleanly_on_sigterm(baselines: dict[str, ServerProcess]) -> None:
    for server in baselines.values():
        server.proc.send_signal(signal.SIGTERM)
    for server in baselines.values():
        assert server.proc.wait(30) in CLEAN_EXIT, server.log()
        assert "Application shutdown complete" in server.log()
