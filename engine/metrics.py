"""Prometheus metrics of the engine (served by the HTTP layer at /metrics)."""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter as Counter_
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engine.ring import owned_bytes

SESSIONS_OPEN = Gauge("parastream_sessions_open", "Sessions holding a ring and a worker cache")
SESSIONS_CREATED = Counter("parastream_sessions_created_total", "Sessions created")
SESSIONS_EVICTED = Counter("parastream_sessions_evicted_total", "Sessions closed by the idle timeout")
AUDIO_SECONDS = Counter("parastream_audio_seconds_total", "Audio received, in seconds")
STRIDES = Counter("parastream_strides_total", "Strides processed by workers")
STRIDE_COMPUTE = Histogram(
    "parastream_stride_compute_seconds",
    "Wall time of the forward pass that computed each stride (shared by the strides of one batch)",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0),
)
STRIDE_SNAPSHOT = Histogram(
    "parastream_stride_snapshot_seconds",
    "Time to save a session's snapshot after a stride (what crash recovery costs)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)
STRIDE_BATCH = Histogram(
    "parastream_stride_batch_size",
    "Sessions sharing the forward pass of each stride (PARASTREAM_MAX_BATCH bounds it)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
)
SESSIONS_RESTORED = Counter("parastream_sessions_restored_total", "Sessions carried over to another worker after a crash")
WORKER_RESTARTS = Counter("parastream_worker_restarts_total", "Workers lost and replaced")
SESSIONS_MIGRATED = Counter(
    "parastream_sessions_migrated_total",
    "Sessions moved to another worker with their state (reason: rebalance or manual)",
    ["reason"],
)
SENTENCES = Counter("parastream_sentences_total", "Sentences decoded by the offline model (2pass and offline sessions)")
SENTENCE_COMPUTE = Histogram(
    "parastream_sentence_compute_seconds",
    "Wall time of the offline forward pass that decoded each sentence, plus its punctuation",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
SENTENCE_BATCH = Histogram(
    "parastream_sentence_batch_size",
    "Sentences sharing the offline forward pass of each sentence (PARASTREAM_OFFLINE_MAX_BATCH bounds it)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16),
)

# --- issue 14: the service's state, latencies and refusals (docs/operations.md lists every metric) -------------------

# How the API process heard of each session's work, measured where its events are emitted.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
PARTIAL_LATENCY = Histogram(
    "parastream_partial_latency_seconds",
    "From the append that completed a stride's audio (the ring write that made the stride ready) to that stride's "
    "partial event being emitted in the API process (strides with new tokens; not the final step)",
    buckets=_LATENCY_BUCKETS,
)
SENTENCE_LATENCY = Histogram(
    "parastream_sentence_latency_seconds",
    "From the append that carried the audio the VAD ended a sentence in (the sentence's audio_end) to its sentence "
    "event being emitted in the API process (2pass and offline sessions)",
    buckets=_LATENCY_BUCKETS,
)
APPEND_LATENCY = Histogram(
    "parastream_append_latency_seconds",
    "Server-side handling time of one append in the engine: checks, resampling, the ring write and the worker's "
    "wake-up (reading the body off the network is not included); appends that are refused are not observed",
    buckets=(0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
)
REAL_TIME_FACTOR = Histogram(
    "parastream_real_time_factor",
    "Compute seconds per audio second of each full stride: the forward pass's wall time divided by the sessions "
    "sharing it, over the stride's duration (under 1: a worker core keeps up with that many real-time streams)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
)
REJECTED = Counter(
    "parastream_rejected_requests_total",
    "Requests refused before being served, by reason: service_full, not_ready (503), too_many_sessions, rate_limited, "
    "buffer_full (429), payload_too_large (413), unauthorized (401: a missing or wrong key)",
    ["reason"],
)
# A cluster (engine/cluster/): what replication costs this node, and sessions that changed node.
CLUSTER_REPLICAS = Counter("parastream_cluster_replicas_total", "Session replicas written to the cluster's Redis")
CLUSTER_REPLICA_BYTES = Counter(
    "parastream_cluster_replica_bytes_total", "Bytes of snapshots and audio written to Redis in replicas"
)
CLUSTER_REPLICA_CAPTURE = Histogram(
    "parastream_cluster_replica_capture_seconds",
    "Event-loop time to capture one replica (read the snapshot, copy the ring's tail and the resampler)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)
CLUSTER_REPLICA_WRITE = Histogram(
    "parastream_cluster_replica_write_seconds",
    "Time from a replica's capture to Redis confirming it (serialising it included)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
CLUSTER_TAKEOVERS = Counter(
    "parastream_cluster_takeovers_total", "Sessions this node took over from another (lost or drained) node"
)
CLUSTER_HANDOFFS = Counter("parastream_cluster_handoffs_total", "Sessions this node handed off in a drain")
WEBSOCKETS_OPEN = Gauge("parastream_websocket_connections_open", "WebSocket connections open now", ["protocol"])
WEBSOCKETS = Counter("parastream_websocket_connections_total", "WebSocket connections accepted", ["protocol"])


def reject(reason: str) -> None:
    """Count one refused request (`parastream_rejected_requests_total{reason}`); e.g. reject("unauthorized")."""
    REJECTED.labels(reason).inc()


@contextlib.contextmanager
def websocket_connection(protocol: str) -> Iterator[None]:
    """Counts a WebSocket connection (protocol: funasr_ws | openai_realtime) for as long as the block runs."""
    WEBSOCKETS.labels(protocol).inc()
    WEBSOCKETS_OPEN.labels(protocol).inc()
    try:
        yield
    finally:
        WEBSOCKETS_OPEN.labels(protocol).dec()


class EngineState(Protocol):
    """What the scrape-time collector reads of an engine (engine.service.Engine), on the event loop's thread."""

    def state_metrics(self) -> StateMetrics: ...


@dataclass
class StateMetrics:
    """An engine's state at one instant, as the collector exposes it."""

    by_kind: Counter_[tuple[str, str]] = field(default_factory=Counter_)  # (mode, protocol) -> open sessions
    per_worker: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # worker -> (sessions, queue, behind)


_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def watch(engine: EngineState) -> None:
    """Expose `engine`'s state at every scrape (Engine.start); engines in one process (tests) are added up."""
    _engines.add(engine)


def unwatch(engine: EngineState) -> None:
    _engines.discard(engine)


class _StateCollector(Collector):
    """Metrics read from the engines' state when /metrics is scraped, so they are always right and cost nothing
    between scrapes."""

    def collect(self) -> Iterator[Metric]:
        by_kind = GaugeMetricFamily(
            "parastream_sessions_open_by_protocol",
            "Open sessions (taking audio or finishing) by mode (online, 2pass, offline) and protocol (rest, funasr_ws, "
            "openai, openai_realtime)",
            labels=["mode", "protocol"],
        )
        sessions = GaugeMetricFamily(
            "parastream_worker_sessions_open", "Open sessions placed on each worker slot", labels=["worker"]
        )
        queue = GaugeMetricFamily(
            "parastream_worker_queue_depth",
            "Sessions on each worker with at least one full stride of received audio not yet computed: the work its "
            "next forward passes take (each takes up to PARASTREAM_MAX_BATCH of them)",
            labels=["worker"],
        )
        behind = GaugeMetricFamily(
            "parastream_worker_strides_behind",
            "Full strides of audio the sessions on each worker have received and it has not computed yet (ring write "
            "position minus processed position, in strides, summed)",
            labels=["worker"],
        )
        kinds: Counter_[tuple[str, str]] = Counter_()
        workers: dict[str, list[int]] = {}
        for engine in list(_engines):
            state = engine.state_metrics()
            kinds.update(state.by_kind)
            for worker, values in state.per_worker.items():
                totals = workers.setdefault(worker, [0, 0, 0])
                for i, value in enumerate(values):
                    totals[i] += value
        for (mode, protocol), count in sorted(kinds.items()):
            by_kind.add_metric([mode, protocol], count)
        for worker, (n, depth, strides) in sorted(workers.items()):
            sessions.add_metric([worker], n)
            queue.add_metric([worker], depth)
            behind.add_metric([worker], strides)
        yield from (by_kind, sessions, queue, behind)
        yield GaugeMetricFamily(
            "parastream_shared_memory_bytes",
            "Bytes of the shared-memory segments (/dev/shm) the API process owns: session rings and their snapshots",
            value=owned_bytes(),
        )


REGISTRY.register(_StateCollector())
