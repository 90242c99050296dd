"""Every tunable of the service, read from the environment or a `.env` file (prefix `PARASTREAM_`).

Each limit is a named setting with a documented default; `.env.example` lists them all and a test keeps the two in
step. This module imports neither torch nor FastAPI: both the HTTP process and the model processes read it.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.units import PREROLL_KEEP_S, SAMPLE_RATE


def default_workers() -> int:
    """One worker per usable core. GPU counting happens in the supervisor (it must not import torch here)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARASTREAM_", env_file=".env", extra="ignore")

    # --- model ---
    model: str = Field(
        "paraformer-zh-streaming",
        description="FunASR model name (downloaded through FunASR where the hub is reachable) or a local model dir.",
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="cpu: a worker per core; cuda: a worker per GPU.")
    workers: int = Field(0, ge=0, description="Worker processes; 0 means one per core (cpu) or one per GPU (cuda).")
    worker_threads: int = Field(1, ge=1, description="Torch threads per worker (each worker is pinned to a core).")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description=(
            "What runs the encoder. torch: PyTorch eager, FunASR's own modules (the reference). onnx: FunASR's encoder "
            "layers exported with their caches, on ONNX Runtime (CPU, fp32; built once per model, cached beside it). "
            "auto: onnx for fp32 on CPU, torch for int8 or CUDA. docs/runtime.md compares them."
        ),
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description=(
            "fp32: FunASR's numbers (served tokens equal its loop). int8: per-channel int8 matmuls, cheaper, CPU only; "
            "what it costs in accuracy is in benchmarks/results/accuracy-digits.md (engine/model/precision.py says how)."
        ),
    )

    # --- 2pass: sentences (docs/pipeline.md) ---
    vad_model: str = Field(
        "",
        description=(
            "FSMN-VAD for sentence ends (e.g. fsmn-vad, or a local dir). Empty: off. With PARASTREAM_OFFLINE_MODEL it "
            "enables the 2pass and offline session modes."
        ),
    )
    offline_model: str = Field(
        "", description="Offline Paraformer that decodes each ended sentence again (e.g. paraformer-zh). Empty: off."
    )
    punc_model: str = Field(
        "",
        description=(
            "CT-Transformer that punctuates sentences, with a cache carried across them (FunASR's vad_realtime model, "
            "iic/punc_ct-transformer_zh-cn-common-vad_realtime-vocab272727). Empty: sentences are not punctuated."
        ),
    )
    offline_max_batch: int = Field(
        8, ge=1, description="Most ended sentences (across sessions) one offline forward pass takes."
    )
    max_sentence_s: float = Field(
        60.0,
        gt=0,
        le=600,
        description=(
            "Longest sentence: the VAD ends a sentence this long and the next begins (FunASR's max_single_segment_time, "
            "which this overrides). Rings of 2pass/offline sessions are sized to hold one."
        ),
    )

    # --- HTTP ---
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    # --- sessions ---
    max_sessions: int = Field(64, ge=1, description="Open sessions allowed at once; past it POST /v1/sessions is 503.")
    session_idle_timeout_s: float = Field(60.0, gt=0, description="A session with no audio for this long is closed.")
    finished_session_ttl_s: float = Field(
        120.0, ge=0, description="How long a finished session's events stay readable (GET, SSE resume)."
    )
    max_append_bytes: int = Field(
        640_000, ge=2, description="Largest audio body one append may carry (20 s of 16 kHz 16-bit PCM)."
    )
    max_upload_bytes: int = Field(
        100_000_000,
        ge=1,
        description=(
            "Largest file POST /v1/audio/transcriptions (OpenAI's API) takes, multipart body included; larger is 413, "
            "checked while reading."
        ),
    )
    ring_seconds: float = Field(
        30.0, gt=0, description="Per-session ring capacity in seconds of 16 kHz audio; a full ring answers 429."
    )

    event_history: int = Field(
        1000, ge=1, description="Events kept per session for SSE resume; an older resume point is reported as a gap."
    )

    # --- access (docs/operations.md) ---
    api_keys: str = Field(
        "",
        description=(
            "Keys that may use the service: comma-separated, or @path to a file of them (one per line or "
            "comma-separated). Empty: no key is needed. Set: every /v1 route and WebSocket needs one (HTTP: "
            "Authorization: Bearer; WebSocket: that header or ?api_key=), and a session answers only its creator's key."
        ),
    )
    admin_keys: str = Field(
        "",
        description=(
            "Keys (same forms) that may also use the operator routes (/v1/workers, migrate); they are API keys too. "
            "Empty with API keys set: nobody may."
        ),
    )
    metrics_public: bool = Field(
        False, description="With API keys set, /metrics needs an admin key unless this is true (probes stay open)."
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated origins other pages may call the API from (* for any); the service's own page "
        "is same-origin and needs none. Empty: none.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: readable lines; json: one JSON object per line (session id and protocol as fields)."
    )

    # --- limits ---
    max_sessions_per_key: int = Field(
        16, ge=1, description="Open sessions one API key may hold at once (with keys set); past it 429."
    )
    max_appends_per_s: float = Field(
        50.0,
        gt=0,
        description=(
            "Appends per second one session may make (bursts of a second's worth). Past it a REST append is 429; a "
            "WebSocket's audio is gathered into fewer, larger appends instead, never refused."
        ),
    )
    max_session_s: float = Field(
        8 * 3600.0, gt=0, description="Longest a session may last (a long meeting fits); then it is closed and finalised."
    )
    max_ws_message_bytes: int = Field(
        1_048_576, ge=1024, description="Largest WebSocket message taken (FunASR's and OpenAI realtime's); larger closes 1009."
    )
    max_discard_bytes: int = Field(
        134_217_728,
        ge=0,
        description=(
            "After refusing a request body (413, or any answer given before the body was read), read and discard up "
            "to this much of it, for at most 2 s, so that a client still sending reads the answer instead of a "
            "connection reset (nginx's lingering close). 128 MiB: more than the largest upload taken; 0: never."
        ),
    )

    # --- SSE ---
    sse_ping_s: float = Field(15.0, gt=0, description="Keep-alive comment interval on event streams.")
    sse_send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A subscriber (event stream, or FunASR WebSocket client) that accepts nothing for this long is dropped.",
    )
    send_buffer_bytes: int = Field(
        0,
        ge=0,
        description=(
            "Kernel send buffer of each HTTP connection, bytes; 0: the kernel autotunes it (up to net.ipv4.tcp_wmem's "
            "max, often 4 MiB). Bounds what a subscriber that stopped reading pins until the send timeout drops it."
        ),
    )

    # --- supervision ---
    worker_ping_interval_s: float = Field(2.0, gt=0, description="How often each worker is pinged.")
    worker_ping_timeout_s: float = Field(
        60.0, gt=0, description="A worker that answers no ping for this long is killed and replaced."
    )
    worker_boot_timeout_s: float = Field(600.0, gt=0, description="Longest a worker or the model host may take to load.")
    max_boot_failures: int = Field(
        3, ge=1, description="Consecutive failed worker boots in one slot before the service stops respawning it."
    )
    max_session_restores: int = Field(
        3, ge=0, description="Times one session may be carried over after its worker died before it ends in error."
    )
    shutdown_grace_s: float = Field(10.0, ge=0, description="Time to finish received audio on SIGTERM.")

    # --- batching ---
    max_batch: int = Field(
        16,
        ge=1,
        description="Most sessions' strides one forward pass takes; 1 turns cross-session batching off.",
    )

    # --- load balancing ---
    rebalance_interval_s: float = Field(
        1.0,
        ge=0,
        description="How often the balancer compares worker loads and may move one open session; 0 disables it.",
    )
    rebalance_spread: int = Field(
        2,
        ge=2,  # at 1, moving a session between workers one apart would only swap their loads, back and forth
        description="Session-count difference between the busiest and the idlest ready worker that triggers a move.",
    )

    # --- cluster (docs/cluster.md) ---
    cluster_redis: str = Field(
        "",
        description=(
            "Redis URL of the shared session directory and snapshot store (redis://[:password@]host:6379/0). Empty: "
            "this node runs alone. Set: REST online sessions are replicated there and survive this node's loss."
        ),
    )
    cluster_node: str = Field(
        "", description="This node's name in the directory; unique per node. Empty: <hostname>:<port>."
    )
    cluster_prefix: str = Field("parastream:", description="Prefix of every Redis key the cluster writes.")
    cluster_replicate_strides: int = Field(
        10,
        ge=1,
        description=(
            "A session's snapshot is copied to Redis every this many strides (10 = 6 s of audio): after a node's loss "
            "at most this much is replayed by the client; smaller costs more bytes per second (docs/cluster.md)."
        ),
    )
    cluster_node_ttl_s: float = Field(
        3.0,
        gt=0,
        description="A node whose heartbeat is this old is dead: another node may take its sessions over.",
    )
    cluster_drain_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM or POST /v1/admin/drain, how long open sessions may finish before they are handed off.",
    )
    cluster_agent_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="TCP port of the HAProxy agent-check (free capacity, drain, down); 0: none.",
    )

    @model_validator(mode="after")
    def _sentence_models_together(self) -> Settings:
        if bool(self.vad_model) != bool(self.offline_model):
            raise ValueError(
                "PARASTREAM_VAD_MODEL and PARASTREAM_OFFLINE_MODEL go together: the VAD finds sentences, the offline "
                "model decodes them (set both, or neither)"
            )
        if self.punc_model and not self.vad_model:
            raise ValueError("PARASTREAM_PUNC_MODEL punctuates sentences: it needs PARASTREAM_VAD_MODEL and OFFLINE_MODEL")
        return self

    @property
    def sentences_enabled(self) -> bool:
        """The 2pass and offline modes are available."""
        return bool(self.vad_model and self.offline_model)

    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "onnx" if self.device == "cpu" and self.precision == "fp32" else "torch"

    def resolved_workers(self, gpu_count: int | None = None) -> int:
        if self.workers:
            return self.workers
        if self.device == "cuda" and gpu_count:
            return gpu_count
        return default_workers()

    @property
    def cluster_node_name(self) -> str:
        return self.cluster_node or f"{socket.gethostname()}:{self.port}"

    @property
    def cluster_redis_display(self) -> str:
        """The Redis URL without its password, for logs."""
        return re.sub(r"//[^@/]*@", "//***@", self.cluster_redis)

    @property
    def ring_capacity_samples(self) -> int:
        return int(self.ring_seconds * SAMPLE_RATE)

    @property
    def sentence_ring_capacity_samples(self) -> int:
        """A 2pass/offline session's ring: its audio is released only once its sentence is decoded, so it must hold
        the longest sentence plus the pre-roll FunASR keeps before it (engine/worker/sentences.py), on top of the
        usual room to run ahead."""
        return int((self.ring_seconds + self.max_sentence_s + PREROLL_KEEP_S) * SAMPLE_RATE)
