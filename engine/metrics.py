"""Prometheus metrics of the engine (served by the HTTP layer at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SESSIONS_OPEN = Gauge("parastream_sessions_open", "Sessions holding a ring and a worker cache")
SESSIONS_CREATED = Counter("parastream_sessions_created_total", "Sessions created")
SESSIONS_REJECTED = Counter("parastream_sessions_rejected_total", "Session creations refused", ["reason"])
SESSIONS_EVICTED = Counter("parastream_sessions_evicted_total", "Sessions closed by the idle timeout")
APPENDS_REJECTED = Counter("parastream_appends_rejected_total", "Appends refused because a ring was full")
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
