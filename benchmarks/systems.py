"""The systems under test, each started as its own server process behind the same HTTP/SSE API.

- `parastream-1w`: Parastream with one worker, batching across sessions (the defaults: fp32, encoder on ONNX Runtime).
- `parastream-Nw`: Parastream with one worker per core, batching.
- `parastream-Nw-torch`: the same with the encoder on PyTorch eager (`PARASTREAM_BACKEND=torch`, the reference).
- `parastream-Nw-int8`, `parastream-Nw-int8-lb0`: `PARASTREAM_PRECISION=int8`, sessions at look-back 4/1 and 0/0.
- `parastream-Nw-unbatched`: the defaults with `PARASTREAM_MAX_BATCH=1` (one session per forward pass).
- `funasr-onnx-fp32`, `funasr-onnx-int8`: FunASR's exported graphs served like its C++ runtime (look-back 0/0, one
  shared pair of ONNX Runtime sessions, a thread pool, per-stream state); the int8 one is that runtime's default.
- `funasr-threads`: FunASR's Python-server design, one shared AutoModel, generate() from a 4-thread pool.
- `sequential`: one model, one stride at a time on the event loop (the simplest correct server).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import ServerProcess, free_port, usable_cores


@dataclass(frozen=True)
class SystemSpec:
    name: str
    description: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    # What its transcripts are checked against: FunASR's loop at this precision and (encoder, decoder) look-back,
    # which every session of the trial asks for.
    precision: str = "fp32"
    look_back: tuple[int, int] = (4, 1)

    @property
    def session_options(self) -> dict[str, int]:
        if self.look_back == (4, 1):
            return {}  # the API's defaults: baselines that take no options see the same request
        return {"encoder_chunk_look_back": self.look_back[0], "decoder_chunk_look_back": self.look_back[1]}


def all_systems(model_dir: Path) -> list[SystemSpec]:
    cores = usable_cores()
    serve = (sys.executable, "-m", "app.cli", "serve")
    limits = {"PARASTREAM_MAX_SESSIONS": "1024", "PARASTREAM_SESSION_IDLE_TIMEOUT_S": "120"}
    baseline = (sys.executable, "-m", "benchmarks.baselines.funasr_server", "--model", str(model_dir))
    unbatched = {"PARASTREAM_MAX_BATCH": "1"}
    onnx_baseline = (sys.executable, "-m", "benchmarks.baselines.funasr_onnx_server", "--model", str(model_dir))
    return [
        SystemSpec("parastream-1w", "Parastream, 1 worker, batched", serve, {**limits, "PARASTREAM_WORKERS": "1"}),
        SystemSpec(
            f"parastream-{cores}w", f"Parastream, {cores} workers (one per core), batched", serve,
            {**limits, "PARASTREAM_WORKERS": str(cores)},
        ),
        SystemSpec(
            f"parastream-{cores}w-torch", f"Parastream, {cores} workers, batched, encoder on PyTorch eager", serve,
            {**limits, "PARASTREAM_WORKERS": str(cores), "PARASTREAM_BACKEND": "torch"},
        ),
        SystemSpec(
            f"parastream-{cores}w-unbatched", f"Parastream, {cores} workers (one per core), batching off", serve,
            {**limits, "PARASTREAM_WORKERS": str(cores), **unbatched},
        ),
        SystemSpec(
            f"parastream-{cores}w-int8", f"Parastream, {cores} workers, batched, int8, look-back 4/1", serve,
            {**limits, "PARASTREAM_WORKERS": str(cores), "PARASTREAM_PRECISION": "int8"}, precision="int8",
        ),
        SystemSpec(
            f"parastream-{cores}w-int8-lb0", f"Parastream, {cores} workers, batched, int8, look-back 0/0", serve,
            {**limits, "PARASTREAM_WORKERS": str(cores), "PARASTREAM_PRECISION": "int8"}, precision="int8",
            look_back=(0, 0),
        ),
        SystemSpec(
            "funasr-onnx-fp32", "FunASR's fp32 ONNX graphs served like its C++ runtime (look-back 0/0)", onnx_baseline,
            look_back=(0, 0),
        ),
        # No FunASR loop computes ONNX Runtime's int8 graph, so its transcripts are compared with the fp32 0/0 loop:
        # its 'wrong' count is its disagreement with fp32 on a random model (a lower bound on agreement, not errors).
        SystemSpec(
            "funasr-onnx-int8", "FunASR's int8 ONNX graphs served like its C++ runtime (look-back 0/0)",
            (*onnx_baseline, "--quantize"), look_back=(0, 0),
        ),
        SystemSpec("funasr-threads", "FunASR server design: shared AutoModel, 4 generate() threads",
                   (*baseline, "--mode", "threads", "--threads", "4")),
        SystemSpec("sequential", "One process, one stride at a time", (*baseline, "--mode", "sequential")),
    ]


class RunningSystem(ServerProcess):
    """A system's server process, started at once: `with` waits for /readyz and stops it at the end."""

    def __init__(self, spec: SystemSpec, model_dir: Path) -> None:
        self.spec = spec
        port = free_port()
        argv = list(spec.argv)
        if any(arg.startswith("benchmarks.baselines.") for arg in argv):
            argv += ["--port", str(port)]
        env = {**spec.env, "PARASTREAM_MODEL": str(model_dir), "PARASTREAM_PORT": str(port)}
        super().__init__(argv, env, port=port, name=f"bench-{spec.name}", ready_timeout=300)
        self.start(wait=False)

    def close(self, strict: bool = False) -> None:
        """Stopped gracefully if it will (a warning if not), killed otherwise; its log goes with it."""
        try:
            super().close(strict)
        finally:
            self.remove_log()
