"""A short soak: sessions opening and closing for about two minutes leak no segments and no descriptors."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.soak import FD_SLACK, run_soak


@pytest.mark.bench_smoke
def test_short_soak_leaks_nothing(tiny_model_dir: Path) -> None:
    result = run_soak(tiny_model_dir, streams=6, seconds=100, sample_every=5)
    assert result["sessions_completed"] >= 6 * 5
    assert result["errors"] == 0 and result["wrong_transcripts"] == 0
    assert result["segments_idle_end"] == 0 and result["segments_after_stop"] == 0
    assert result["fds_idle_end"] - result["fds_idle_start"] <= FD_SLACK, result
