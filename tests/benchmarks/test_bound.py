"""benchmarks.bound: structure and internal consistency of the in-process bound (never its timing values)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.bound import STRIDE_MS, derive, measure_bound

STAT_KEYS = {"median", "p95", "mean", "min", "max", "n"}


def _check_stats(stats: dict, n: int, positive: bool = True) -> None:
    assert set(stats) == STAT_KEYS
    assert stats["n"] == n
    assert stats["min"] <= stats["median"] <= stats["max"]
    assert stats["min"] <= stats["mean"] <= stats["max"]
    assert stats["median"] <= stats["p95"] <= stats["max"]
    if positive:
        assert stats["min"] > 0


@pytest.fixture(scope="module")
def bound(tiny_model_dir: Path) -> dict:
    # Small matmuls keep the worker quick; the subprocess mostly spends its time importing funasr.
    return measure_bound(tiny_model_dir, strides=8, threads=[1], matmul_sizes=(256, 512), matmul_reps=2)


def test_structure_and_sanity(bound: dict, tiny_model_dir: Path) -> None:
    json.dumps(bound)  # JSON-serialisable as returned
    assert set(bound) >= {"schema", "machine", "model", "settings", "by_threads", "flops", "derived"}
    assert bound["settings"]["threads"] == [1] and bound["settings"]["strides"] == 8
    assert bound["settings"]["chunk_size"] == [0, 10, 5]

    machine = bound["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["torch"] and machine["funasr"]

    model = bound["model"]
    assert model["name"] == tiny_model_dir.name
    parts = model["params"]
    assert all(parts[p] > 0 for p in ("encoder", "predictor", "decoder"))
    assert model["params_total"] >= sum(parts.values())

    assert set(bound["by_threads"]) == {"1"}
    run = bound["by_threads"]["1"]
    assert run["threads"] == 1 and run["torch_num_threads"] == 1
    _check_stats(run["stride_ms"], 8)
    _check_stats(run["cpu_ms"], 8, positive=False)
    assert set(run["split_ms"]) == {"frontend", "encoder", "predictor", "decoder", "other"}
    for part, stats in run["split_ms"].items():
        _check_stats(stats, 8, positive=part in ("frontend", "encoder", "predictor"))
    # The timed pieces lie inside the step: their means cannot exceed the step's mean.
    pieces = sum(run["split_ms"][p]["mean"] for p in ("frontend", "encoder", "predictor", "decoder"))
    assert pieces <= run["stride_ms"]["mean"] * 1.001

    matmul = run["matmul"]
    assert set(matmul["by_size"]) == {"256", "512"}
    assert matmul["peak_gflops"] > 0
    assert matmul["peak_gflops"] == max(v["best_gflops"] for v in matmul["by_size"].values())
    assert run["read_gbs"] > 0
    assert all(v["gflops"] > 0 and v["rows"] == 15 * int(b) for b, v in run["ffn_gemm"]["by_batch"].items())


def test_flops(bound: dict) -> None:
    flops = bound["flops"]
    assert flops["counted_per_stride"] > 0
    assert flops["encoder_frames"] == 15  # 10 new frames + 5 of look-ahead with chunk_size [0, 10, 5]
    assert flops["decoder_tokens"] >= 0
    by_part = flops["counted_by_part"]
    assert by_part["frontend"] == 0  # kaldi-native-fbank runs outside torch
    assert by_part["encoder"] > 0 and by_part["predictor"] > 0
    # Everything counted happens inside one of the wrapped pieces ...
    assert sum(by_part.values()) == flops["counted_per_stride"]
    # ... and is a matmul or a convolution.
    assert sum(flops["counted_by_op"].values()) == flops["counted_per_stride"]
    assert flops["analytic_per_stride"] == sum(flops["analytic_by_part"].values()) > 0
    assert math.isclose(flops["counted_over_analytic"], flops["counted_per_stride"] / flops["analytic_per_stride"])
    # Same model, same audio: the same FLOPs.
    assert flops["counted_per_stride_by_threads"] == {"1": flops["counted_per_stride"]}


def test_derived_consistent_with_inputs(bound: dict) -> None:
    d, run = bound["derived"], bound["by_threads"]["1"]
    cores = bound["machine"]["cores"]
    median_1 = run["stride_ms"]["median"]
    per_stream = bound["flops"]["counted_per_stride"] / (STRIDE_MS / 1000) / 1e9

    assert d["cores"] == cores
    assert math.isclose(d["gflops_per_realtime_stream"], per_stream)
    assert math.isclose(d["streams_compute_bound"], cores * STRIDE_MS / median_1)
    assert math.isclose(d["rtf_by_threads"]["1"], median_1 / STRIDE_MS)
    if cores == 1:
        assert math.isclose(d["streams_compute_bound_one_process"], STRIDE_MS / median_1)
        assert d["peak_gflops_all_cores"] == run["matmul"]["peak_gflops"]
    else:  # the all-cores run was not asked for: its figure is absent, the peak extrapolated
        assert d["streams_compute_bound_one_process"] is None
        assert math.isclose(d["peak_gflops_all_cores"], cores * run["matmul"]["peak_gflops"])
        assert d["peak_gflops_all_cores_source"].startswith("extrapolated")
    assert math.isclose(d["streams_flop_bound"], d["peak_gflops_all_cores"] / per_stream)
    assert math.isclose(d["achieved_gflops_1thread"], bound["flops"]["counted_per_stride"] / (median_1 / 1000) / 1e9)
    assert math.isclose(d["flop_efficiency_1thread"], d["achieved_gflops_1thread"] / run["matmul"]["peak_gflops"])
    model = bound["model"]
    touched = model["weights_mib"] * 2**20 - 4 * model["params_embedding"]
    assert math.isclose(d["weight_read_floor_ms_1thread"], touched / (run["read_gbs"] * 1e9) * 1000)


def test_derive_arithmetic() -> None:
    """derive() on made-up numbers: 1 thread 100 ms, 2 threads 80 ms, 6 GFLOP per stride."""
    result = {
        "flops": {"counted_per_stride": 6e9},
        "by_threads": {
            "1": {"stride_ms": {"median": 100.0}, "matmul": {"peak_gflops": 50.0}},
            "2": {"stride_ms": {"median": 80.0}, "matmul": {"peak_gflops": 90.0}},
        },
    }
    d = derive(result, cores=2)
    assert math.isclose(d["gflops_per_realtime_stream"], 10.0)
    assert math.isclose(d["streams_compute_bound"], 12.0)  # 2 cores x 600 / 100
    assert math.isclose(d["streams_compute_bound_one_process"], 7.5)  # 600 / 80
    assert d["peak_gflops_all_cores"] == 90.0 and d["peak_gflops_all_cores_source"] == "measured at 2 threads"
    assert math.isclose(d["streams_flop_bound"], 9.0)  # 90 / 10
    assert math.isclose(d["achieved_gflops_1thread"], 60.0)
    assert math.isclose(d["flop_efficiency_1thread"], 1.2)
    assert d["weight_read_floor_ms_1thread"] is None  # no model / bandwidth figures given


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        measure_bound(tmp_path / "missing", strides=1, threads=[1])
    with pytest.raises(ValueError):
        measure_bound(tmp_path, strides=0, threads=[1])
    with pytest.raises(ValueError):
        measure_bound(tmp_path, strides=1, threads=[0])
