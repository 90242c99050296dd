"""What a Parastream server says about a trial through `/metrics`: how its strides were batched and what they cost.

The load generator sees latency; these counters say where it went (batch sizes, wall time of the forward passes,
snapshot time). Baselines without `/metrics` give None.
"""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

_WANTED = ("parastream_stride_batch_size", "parastream_stride_compute_seconds", "parastream_stride_snapshot_seconds")


def scrape(base_url: str, wanted: tuple[str, ...] = _WANTED) -> dict[str, float] | None:
    """Sums and counts of the `wanted` histograms (the stride ones by default) and the stride batch-size buckets, or
    None if the server has no /metrics."""
    try:
        response = httpx.get(f"{base_url}/metrics", timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name not in wanted:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                values[sample.name] = sample.value
            elif sample.name == "parastream_stride_batch_size_bucket":
                values[f"batch_le_{sample.labels['le']}"] = sample.value
    return values


def trial_summary(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any] | None:
    """The trial's strides: how many, the batch size each saw, and per-stride mean forward-pass and snapshot time.

    Each stride reports the wall time of the forward pass it shared, so `forward_ms_mean` is per stride, weighted by
    batch: it is what a stride waited for once its batch started."""
    if before is None or after is None:
        return None
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    strides = delta.get("parastream_stride_batch_size_count", 0.0)
    if not strides:
        return {"strides": 0}
    buckets = sorted(
        ((float(key.removeprefix("batch_le_")), value) for key, value in delta.items() if key.startswith("batch_le_")),
    )
    histogram, below = {}, 0.0
    for bound, cumulative in buckets:
        if cumulative > below:
            histogram["+Inf" if bound == float("inf") else f"<={bound:g}"] = int(cumulative - below)
        below = cumulative
    return {
        "strides": int(strides),
        "batch_size_mean": round(delta["parastream_stride_batch_size_sum"] / strides, 2),
        "batch_size_histogram": histogram,
        "forward_ms_mean": round(1000 * delta["parastream_stride_compute_seconds_sum"] / strides, 1),
        "snapshot_ms_mean": round(1000 * delta["parastream_stride_snapshot_seconds_sum"] / strides, 2),
    }
