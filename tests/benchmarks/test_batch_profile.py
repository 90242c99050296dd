"""benchmarks.batch_profile: quick mode end to end (structure and consistency, never timing values), plus the pure
pieces (the capacity model's arithmetic, the timers' restore)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.batch_profile import PARTS, _Parts, capacity_model
from benchmarks.batch_profile import main as batch_profile_main


@pytest.mark.bench_smoke
def test_quick_run_writes_consistent_results(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert batch_profile_main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path)]) == 0
    name = "batch-profile-tiny-random-quick"
    result = json.loads((tmp_path / f"{name}.json").read_text())
    md = (tmp_path / f"{name}.md").read_text()
    assert md.startswith("# Batch profile") and "Capacity model" in md and "Top ops" in md
    assert "random weights" in result["note"]
    assert result["commit"] and result["machine"]["cores"] >= 1 and result["versions"]["torch"]
    assert result["settings"]["batch_sizes"] == [1, 2, 4] and result["settings"]["threads"] == [1]
    assert result["settings"]["encoder_kv_cache_frames"] == 40

    flops = result["flops"]
    assert flops["per_session_stride"] > 0
    assert flops["by_part"]["frontend"] == 0  # kaldi-native-fbank runs outside torch
    assert math.isclose(sum(flops["by_part"].values()), flops["per_session_stride"])

    run = result["by_threads"]["1"]
    assert run["torch_num_threads"] == 1
    rows = run["rows"]
    assert [r["batch"] for r in rows] == [1, 2, 4]
    assert [r["path"] for r in rows] == ["step", "step_batch", "step_batch"]
    for row in rows:
        b = row["batch_ms"]
        assert b["n"] == 2 and 0 < b["min"] <= b["median"] <= b["p90"] <= b["max"]
        assert math.isclose(row["ms_per_session_stride"], b["median"] / row["batch"])
        split = row["split_ms_mean"]
        assert set(split) == {*PARTS, "other"}
        assert all(split[p] > 0 for p in ("frontend", "encoder", "predictor"))
        pieces = sum(split[p] for p in PARTS)
        assert pieces <= b["mean"] * 1.001 + 0.01  # the timed pieces lie inside the batch
        assert split["other"] >= -0.01 and math.isclose(pieces + split["other"], b["mean"], rel_tol=1e-6)
        assert row["gflops"] > 0 and row["speedup_vs_b1"] > 0
    assert rows[0]["speedup_vs_b1"] == 1.0

    prof = run["profile"]
    assert prof["batch"] == 4 and 0 < len(prof["top_ops"]) <= 10
    assert any(op["op"].startswith("aten::") for op in prof["top_ops"])
    assert run["matmul"]["peak_gflops"] > 0
    cap = run["capacity_model"]
    assert cap["kind"] == "model, not a measurement" and cap["fit_batches"] == [2, 4]
    assert cap["fixed_ms"] is not None and cap["marginal_ms"] is not None


def _rows(times: dict[int, float]) -> list[dict]:
    return [{"batch": b, "batch_ms": {"median": ms}} for b, ms in times.items()]


def test_capacity_model_arithmetic() -> None:
    # batch_ms = 100 + 40 B exactly (B = 1 is not fitted).
    cap = capacity_model(_rows({1: 170.0, 2: 180.0, 4: 260.0, 8: 420.0}))
    assert math.isclose(cap["fixed_ms"], 100.0) and math.isclose(cap["marginal_ms"], 40.0)
    assert math.isclose(cap["r2"], 1.0)
    assert math.isclose(cap["streams_throughput_limit"], 15.0)  # 600 / 40
    assert math.isclose(cap["streams_at_latency_600ms"], 10.0)  # (600 - 200) / 40
    by_n = {p["streams"]: p for p in cap["by_streams"]}
    # N = 10: C = 100 / (1 - 40 * 10 / 600) = 300, B = 10 * 300 / 600 = 5, latency bound 600.
    assert math.isclose(by_n[10]["batch_ms"], 300.0) and math.isclose(by_n[10]["batch"], 5.0)
    assert math.isclose(by_n[10]["latency_bound_ms"], 600.0) and not by_n[10]["extrapolated"]
    assert by_n[12]["extrapolated"]  # C = 500, B = 10 > 8 measured
    # N = 1: fewer than one stride per batch -> strides run alone at fixed + marginal.
    assert by_n[1]["batch"] == 1.0 and math.isclose(by_n[1]["batch_ms"], 140.0)
    assert all(p["streams"] < 15 for p in cap["by_streams"])


def test_capacity_model_without_a_usable_fit() -> None:
    assert capacity_model(_rows({1: 5.0, 2: 8.0}))["fixed_ms"] is None  # one batch size >= 2
    flat = capacity_model(_rows({2: 10.0, 4: 9.0}))  # decreasing: noise
    assert flat["why_none"] and flat["streams_at_latency_600ms"] is None
    slow = capacity_model(_rows({2: 400.0, 4: 500.0}))  # fixed 300, marginal 50: one stream already exceeds 600
    assert slow["streams_at_latency_600ms"] == 0.0


def test_timers_are_restored() -> None:
    import types

    class Thing:
        def work(self, x: int) -> int:
            return x + 1

    thing = Thing()
    module = types.ModuleType("fake")
    module.fn = lambda: 7
    original_fn = module.fn
    parts = _Parts()
    parts.patch(thing, "work", "encoder")
    parts.patch(module, "fn", "frontend")
    assert thing.work(1) == 2 and module.fn() == 7
    assert "work" in vars(thing) and module.fn is not original_fn
    parts.restore()
    assert "work" not in vars(thing) and module.fn is original_fn
