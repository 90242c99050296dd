"""Where a batched stride's time goes: cross-session batching measured in-process, piece by piece.

    python -m benchmarks.batch_profile --model large-random [--threads 1 2] [--batch-sizes 1 2 4 6 8 12 16]
                                       [--strides 8] [--out benchmarks/results]
    python -m benchmarks.batch_profile --quick          # tiny-random, 1 thread, B = 1, 2, 4, 2 strides (the test)

Output: `<out>/batch-profile-<model>[-quick].{json,md}`. The method (batch time, split, top ops, GFLOP/s, and the
capacity model it fits) is in docs/benchmarks.md, "How the batch profile measures".
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    Timer,
    git_commit,
    l3_cache,
    machine,
    now_utc,
    package_versions,
    resolve_model,
    summary_stats,
    usable_cores,
)
from benchmarks.report import versions

SCHEMA = "parastream.batch_profile/1"
PARTS = ("frontend", "encoder", "predictor", "decoder")
DEFAULT_BATCH_SIZES = (1, 2, 4, 6, 8, 12, 16)
DEFAULT_STRIDES = 8
DEFAULT_PROFILE_STRIDES = 2
DEFAULT_FLOP_STRIDES = 3
TOP_OPS = 10
NOISY_P90_OVER_MEDIAN = 1.5
NOISY_CPU_OVER_WALL = 0.8
FLOP_SEED = 1000  # the FLOP-counting session's clip; batch sessions use seeds 0..B-1
QUICK = {"model": "tiny-random", "threads": [1], "batch_sizes": [1, 2, 4], "strides": 2}
QUICK_MATMUL_SIZES = (256, 512)
CAPACITY_NS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256)
NOTE = (
    "The models have random weights (built from FunASR's real streaming Paraformer architecture, so each stride "
    "costs what the real model's does): these figures measure compute cost, never recognition accuracy. Token "
    "counts per stride (and hence decoder work) depend on the random weights and the synthetic audio, so they may "
    "differ from a trained model's on real speech; the encoder, which dominates, does not depend on them."
)

__all__ = ["profile_batches", "capacity_model", "markdown", "write", "main"]


# ------------------------------------------------------------------------------------------------ timers


class _Parts:
    """Timers around the pieces of a stride, installed on the instances (and module) and removed by restore()."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = dict.fromkeys(PARTS, 0.0)
        self.flops: dict[str, int] = dict.fromkeys(PARTS, 0)
        self.flop_mode: Any = None
        self._depth = 0  # only the outermost timed piece counts (none nests today; this keeps it that way)
        self._undo: list[Callable[[], None]] = []

    def reset(self) -> None:
        self.ms = dict.fromkeys(PARTS, 0.0)
        self.flops = dict.fromkeys(PARTS, 0)

    def _wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            f0 = self.flop_mode.get_total_flops() if self.flop_mode is not None else 0
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.ms[part] += (time.perf_counter() - t0) * 1000.0
                if self.flop_mode is not None:
                    self.flops[part] += self.flop_mode.get_total_flops() - f0
                self._depth -= 1

        return timed

    def patch(self, obj: Any, attr: str, part: str) -> None:
        """Replace ``obj.attr`` with a timed wrapper; restore() puts back exactly what was there."""
        had_own = attr in vars(obj)  # a module's attribute, or one already set on the instance
        original = getattr(obj, attr)
        setattr(obj, attr, self._wrap(part, original))
        if had_own:
            self._undo.append(lambda: setattr(obj, attr, original))
        else:  # a method found on the class: drop the instance attribute that now shadows it
            self._undo.append(lambda: delattr(obj, attr))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _install(sm: Any) -> _Parts:
    import engine.model.adapter as adapter

    parts = _Parts()
    model = sm.model
    try:
        parts.patch(adapter, "extract_fbank", "frontend")  # step() and _batch_item() look it up in the module
        parts.patch(model.encoder, "forward_chunk", "encoder")  # B = 1 (FunASR's generate_chunk)
        parts.patch(model.predictor, "forward_chunk", "predictor")  # both paths
        parts.patch(model.decoder, "forward_chunk", "decoder")  # B = 1
        if sm._batched is not None:
            parts.patch(sm._batched, "_encoder_input", "encoder")  # per session: normalize, embed, overlap
            parts.patch(sm._batched, "_encode", "encoder")
            parts.patch(sm._batched, "_decode", "decoder")
    except BaseException:
        parts.restore()
        raise
    return parts


# ------------------------------------------------------------------------------------------------ measuring


class _Sessions:
    """B sessions, each on its own clip, fed one stride at a time."""

    def __init__(self, sm: Any, opts: Any, seeds: list[int], strides_needed: int) -> None:
        from benchmarks.audio import synth_speechlike, to_float32

        self.sm, self.opts = sm, opts
        stride = opts.stride_samples
        self.caches = [sm.new_cache(opts) for _ in seeds]
        clips = [to_float32(synth_speechlike(strides_needed * stride / 16000.0, seed=s)) for s in seeds]
        self.pieces = [[c[i * stride : (i + 1) * stride] for i in range(strides_needed)] for c in clips]
        self.next = 0

    def step(self) -> int:
        """One stride of every session as one call (``step`` for a lone session); returns the tokens produced."""
        i = self.next
        self.next += 1
        if len(self.caches) == 1:
            return len(self.sm.step(self.caches[0], self.pieces[0][i], False, self.opts))
        requests = [(cache, pieces[i], False, self.opts) for cache, pieces in zip(self.caches, self.pieces)]
        return sum(len(t) for t in self.sm.step_batch(requests))


def _count_flops(sm: Any, opts: Any, parts: _Parts, warmup: int, strides: int) -> dict[str, Any]:
    """Counted FLOPs of one steady B = 1 session, mean per stride, split by piece and by aten op."""
    from torch.utils.flop_counter import FlopCounterMode

    session = _Sessions(sm, opts, [FLOP_SEED], warmup + strides)
    for _ in range(warmup):
        session.step()
    parts.reset()
    tokens = 0
    with FlopCounterMode(display=False) as mode:
        parts.flop_mode = mode
        try:
            for _ in range(strides):
                tokens += session.step()
        finally:
            parts.flop_mode = None
    total = int(mode.get_total_flops())
    by_op = {str(op): n / strides for op, n in mode.get_flop_counts().get("Global", {}).items()}
    return {
        "per_session_stride": total / strides,
        "by_part": {p: parts.flops[p] / strides for p in PARTS},
        "by_op": by_op,
        "strides_counted": strides,
        "tokens_per_stride": tokens / strides,
        "counter": "torch.utils.flop_counter.FlopCounterMode: mm/addmm/bmm/convolution only",
        "not_counted": "element-wise ops, softmax/log-softmax, layer norm, the CIF loop, embedding lookups, "
                       "cache copies/concatenation, the fbank frontend (kaldi-native-fbank, outside torch)",
        "batch_flops": "B x per_session_stride (a steady batch has no padding; decoder work varies with tokens)",
    }


def _profile(session: _Sessions, strides: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    with Timer() as timer, profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(strides):
            session.step()
    wall_ms = timer.wall_ms
    events = [e for e in prof.key_averages() if not getattr(e, "is_user_annotation", False)]
    total_self_ms = sum(e.self_cpu_time_total for e in events) / 1000.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_OPS]
    return {
        "batch": len(session.caches),
        "strides": strides,
        "wall_ms_per_stride": wall_ms / strides,
        "self_cpu_ms_per_stride_all_ops": total_self_ms / strides,
        "not_in_any_op_ms_per_stride": max(0.0, wall_ms - total_self_ms) / strides,
        "top_ops": [
            {
                "op": e.key,
                "self_cpu_ms_per_stride": e.self_cpu_time_total / 1000.0 / strides,
                "percent_of_op_time": 100.0 * e.self_cpu_time_total / 1000.0 / total_self_ms if total_self_ms else None,
                "calls_per_stride": e.count / strides,
            }
            for e in top
        ],
    }


def _measure_batch(sm: Any, opts: Any, parts: _Parts, batch: int, warmup: int, strides: int,
                   profile_strides: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    import torch

    session = _Sessions(sm, opts, list(range(batch)), warmup + strides + profile_strides)
    for _ in range(warmup):
        session.step()
    gc.collect()
    wall: list[float] = []
    cpu: list[float] = []
    tokens = 0
    split: dict[str, list[float]] = {p: [] for p in (*PARTS, "other")}
    for _ in range(strides):
        parts.reset()
        with Timer() as timer:
            tokens += session.step()
        cpu.append(timer.cpu_ms)
        wall.append(timer.wall_ms)
        for p in PARTS:
            split[p].append(parts.ms[p])
        split["other"].append(timer.wall_ms - sum(parts.ms.values()))
    wall_stats, cpu_stats = summary_stats(wall, tail=90), summary_stats(cpu, tail=90)
    row = {
        "batch": batch,
        "path": "step" if batch == 1 else "step_batch",
        "batch_ms": wall_stats,
        "cpu_ms": cpu_stats,
        # p90 far above the median, or (at 1 thread) CPU time well below wall time: the machine was not idle.
        "noisy": wall_stats["p90"] > NOISY_P90_OVER_MEDIAN * wall_stats["median"]
                 or torch.get_num_threads() == 1 and cpu_stats["median"] < NOISY_CPU_OVER_WALL * wall_stats["median"],
        "ms_per_session_stride": wall_stats["median"] / batch,
        "split_ms_mean": {p: sum(v) / len(v) for p, v in split.items()},
        "tokens_per_session_stride": tokens / (strides * batch),
    }
    prof = _profile(session, profile_strides) if profile_strides else None
    return row, prof


def profile_batches(
    model_dir: Path,
    threads: list[int],
    batch_sizes: list[int],
    strides: int = DEFAULT_STRIDES,
    *,
    warmup: int | None = None,
    profile_strides: int = DEFAULT_PROFILE_STRIDES,
    flop_strides: int = DEFAULT_FLOP_STRIDES,
    matmul_sizes: tuple[int, ...] | list[int] | None = None,
    matmul_reps: int | None = None,
    precision: str = "fp32",
    backend: str = "torch",
) -> dict[str, Any]:
    """Measure batch times, splits, top ops and GFLOP/s of ``model_dir``; returns a JSON-serialisable dict."""
    import torch

    from benchmarks import bound
    from engine.messages import StreamOptions
    from engine.model.adapter import StreamingModel
    from engine.model.precision import set_precision

    warmup = bound.DEFAULT_WARMUP if warmup is None else warmup
    sizes = list(matmul_sizes or bound.DEFAULT_MATMUL_SIZES)
    reps = matmul_reps or bound.DEFAULT_MATMUL_REPS
    batch_sizes = sorted(set(batch_sizes))
    threads = sorted(set(threads))
    if not batch_sizes or batch_sizes[0] < 1 or not threads or threads[0] < 1:
        raise ValueError("batch sizes and thread counts must be >= 1")
    if strides < 1 or warmup < 0 or profile_strides < 0 or flop_strides < 1:
        raise ValueError("strides and flop_strides must be >= 1, warmup and profile_strides >= 0")

    with Timer() as loading:
        sm = StreamingModel.load(str(model_dir), backend=backend)
    load_s = loading.wall_s
    if sm.batching_unsupported:
        raise RuntimeError(f"this model cannot be batched: {sm.batching_unsupported}")
    opts = StreamOptions()
    model = sm.model
    params = sum(p.numel() for p in model.parameters())
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    parts = _install(sm)
    by_threads: dict[str, Any] = {}
    try:
        torch.set_num_threads(threads[0])
        # FLOPs are counted in fp32 (the profiler counts no quantised matmul), then the precision is applied: an
        # int8 row's GFLOP/s is the fp32 work it stands for, per second.
        # (The profiler cannot see inside ONNX Runtime either: count on the eager encoder, then switch back.)
        runtime, sm.backend, sm._batched.encoder_runtime = sm._batched.encoder_runtime, "torch", None
        flops = _count_flops(sm, opts, parts, warmup, flop_strides)
        sm.backend, sm._batched.encoder_runtime = backend, runtime
        per_session = flops["per_session_stride"]
        set_precision(model, precision)
        for t in threads:
            torch.set_num_threads(t)
            rows, prof = [], None
            for b in batch_sizes:
                row, p = _measure_batch(sm, opts, parts, b, warmup, strides,
                                        profile_strides if b == batch_sizes[-1] else 0)
                prof = p or prof
                rows.append(row)
            matmul = bound._matmul_peak(sizes, reps)
            base = next((r for r in rows if r["batch"] == 1), None)
            for r in rows:
                r["speedup_vs_b1"] = (base["ms_per_session_stride"] / r["ms_per_session_stride"]) if base else None
                r["gflops"] = per_session * r["batch"] / (r["batch_ms"]["median"] / 1000.0) / 1e9
                r["percent_of_matmul_peak"] = 100.0 * r["gflops"] / matmul["peak_gflops"]
            by_threads[str(t)] = {
                "threads": t,
                "torch_num_threads": torch.get_num_threads(),
                "rows": rows,
                "profile": prof,
                "matmul": matmul,
                "capacity_model": capacity_model(rows),
            }
    finally:
        parts.restore()

    left, stride_frames, right = opts.chunk_size
    return {
        "schema": SCHEMA,
        "model": {
            "name": Path(model_dir).name,
            "dir": str(model_dir),
            "params": params,
            "weights_mib": weights_mib,
            "load_s": load_s,
        },
        "settings": {
            "threads": threads,
            "precision": precision,
            "backend": backend,
            "batch_sizes": batch_sizes,
            "strides": strides,
            "warmup_strides": warmup,
            "profile_strides": profile_strides,
            "profile_batch": batch_sizes[-1],
            "flop_strides": flop_strides,
            "stride_ms": bound.STRIDE_MS,
            "chunk_size": list(opts.chunk_size),
            "encoder_kv_cache_frames": opts.encoder_chunk_look_back * stride_frames,
            "encoder_frames_per_stride": stride_frames + right,
            "matmul_sizes": sizes,
            "matmul_reps": reps,
            "audio": "synth_speechlike(seed=i) for session i of a batch, one clip per session",
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        },
        "flops": flops,
        "by_threads": by_threads,
    }


# ------------------------------------------------------------------------------------------------ model


def capacity_model(rows: list[dict[str, Any]], stride_ms: float = 600.0) -> dict[str, Any]:
    """Fit ``batch_ms = fixed + marginal x B`` over B >= 2 (medians) and derive the streams one worker could carry.

    A model, not a measurement: see the module docstring."""
    points = [(r["batch"], r["batch_ms"]["median"]) for r in rows if r["batch"] >= 2]
    out: dict[str, Any] = {
        "kind": "model, not a measurement",
        "fit": "batch_ms = fixed_ms + marginal_ms x B, least squares over the measured B >= 2 (median batch ms)",
        "assumes": "batches run back to back; each takes every stride that arrived during the previous one "
                   f"(B = N x C / {stride_ms:g}, continuous; where that is below 1, B = 1 and C = fixed + marginal); "
                   "a stride waits at most one batch, so latency <= 2 x C",
        "fit_batches": [b for b, _ in points],
        "fixed_ms": None, "marginal_ms": None, "r2": None,
        "streams_at_latency_600ms": None, "streams_throughput_limit": None, "by_streams": [],
    }
    if len({b for b, _ in points}) < 2:
        out["why_none"] = "needs at least two distinct batch sizes >= 2"
        return out
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((b - mean_b) ** 2 for b, _ in points)
    marginal = sum((b - mean_b) * (y - mean_y) for b, y in points) / sxx
    fixed = mean_y - marginal * mean_b
    ss_tot = sum((y - mean_y) ** 2 for _, y in points)
    ss_res = sum((y - fixed - marginal * b) ** 2 for b, y in points)
    out.update(fixed_ms=fixed, marginal_ms=marginal, r2=(1 - ss_res / ss_tot) if ss_tot > 0 else None)
    if marginal <= 0 or fixed < 0:
        out["why_none"] = "the fit is not increasing with a non-negative intercept (too noisy or too few points)"
        return out
    limit = stride_ms / marginal
    at_600 = (stride_ms - 2 * fixed) / marginal
    # Below B = 2 the worker is partly idle and runs strides alone (B = 1, C = fixed + marginal; the clamp below):
    # 2C <= 600 then needs fixed + marginal <= 300, exactly when the formula gives N >= 2.
    at_600 = at_600 if at_600 >= 2 else 0.0
    out.update(streams_throughput_limit=limit, streams_at_latency_600ms=at_600)
    largest = max(b for b, _ in points)
    ns = sorted({*(x for x in CAPACITY_NS if x < limit), *([math.floor(at_600)] if at_600 >= 1 else [])})
    for streams in ns:
        c = fixed / (1 - marginal * streams / stride_ms)
        b = streams * c / stride_ms
        if b < 1:  # fewer than one stride arrives per batch: strides run one at a time
            b, c = 1.0, fixed + marginal
        out["by_streams"].append({
            "streams": streams, "batch_ms": c, "latency_bound_ms": 2 * c, "batch": b,
            "extrapolated": b > largest,
        })
    return out


# ------------------------------------------------------------------------------------------------ output


def _metadata() -> dict[str, Any]:
    return {
        "date": now_utc(),
        "commit": git_commit(),
        "machine": {**machine(), "l3_cache": l3_cache()},
        "versions": {**versions(), **package_versions(["kaldi-native-fbank"])},
    }


def _f(x: Any, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(r: dict[str, Any]) -> str:
    m, s, fl = r["machine"], r["settings"], r["flops"]
    lines = [
        f"# Batch profile `{r['name']}`",
        "",
        f"- Backend: {s.get('backend', 'torch')} (`PARASTREAM_BACKEND`), precision: {s.get('precision', 'fp32')} "
        "(`PARASTREAM_PRECISION`).",
        f"- Model: `{r['model']['name']}` ({r['model']['params'] / 1e6:.1f} M params, "
        f"{r['model']['weights_mib']:.0f} MiB of weights), in-process, no server.",
        f"- Each batch size: B sessions on distinct synthetic clips, {s['warmup_strides']} warm-up strides (encoder "
        f"key/value cache at its full {s['encoder_kv_cache_frames']} frames), then {s['strides']} timed strides of "
        f"{s['stride_ms']:g} ms ({s['encoder_frames_per_stride']} encoder frames each). B = 1 runs "
        "`StreamingModel.step` (what a worker runs for a lone session: FunASR's own chunk path on the torch backend, a "
        "batch of one on onnx); B ≥ 2 runs "
        "`step_batch`.",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, L3 {m.get('l3_cache')}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) +
        f". Commit `{r['commit']}`, {r['date']}.",
        f"- FLOPs: {fl['per_session_stride'] / 1e9:.3f} GFLOP per session-stride (counted on a steady B = 1 "
        f"session, mean of {fl['strides_counted']} stride(s), {fl['tokens_per_stride']:.1f} tokens per stride; "
        "matmuls and convolutions only), times B for a batch.",
        "",
        f"> {r['note']}",
        "",
    ]
    for t, run in r["by_threads"].items():
        mm = run["matmul"]
        lines += [
            f"## {t} thread(s) (torch reports {run['torch_num_threads']}; fp32 matmul peak "
            f"{mm['peak_gflops']:.1f} GFLOP/s at n = {mm['peak_at_n']})",
            "",
            "Batch ms: median / p90 of the timed strides. Split columns: mean ms per batch (they add up to the mean "
            "batch time). Speed-up: B = 1's ms per session-stride over this row's. † marks a noisy row (p90 > "
            f"{NOISY_P90_OVER_MEDIAN:g} × median, or at 1 thread CPU < {NOISY_CPU_OVER_WALL:g} × wall): the machine "
            "was probably not idle; re-run before quoting it.",
            "",
            "| B | batch ms median / p90 | CPU ms median | ms per session-stride | speed-up vs B=1 | encoder | "
            "predictor | decoder | frontend | other | GFLOP/s | % of peak |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in run["rows"]:
            b, sp = row["batch_ms"], row["split_ms_mean"]
            lines.append(
                f"| {row['batch']}{' †' if row['noisy'] else ''} | {b['median']:.1f} / {b['p90']:.1f} | "
                f"{row['cpu_ms']['median']:.1f} | "
                f"{row['ms_per_session_stride']:.1f} | {_f(row['speedup_vs_b1'], 2)}× | {sp['encoder']:.1f} | "
                f"{sp['predictor']:.1f} | {sp['decoder']:.1f} | {sp['frontend']:.1f} | {sp['other']:.1f} | "
                f"{row['gflops']:.1f} | {row['percent_of_matmul_peak']:.0f} |"
            )
        prof = run["profile"]
        if prof:
            lines += [
                "",
                f"### Top ops by self CPU time, B = {prof['batch']} ({prof['strides']} profiled stride(s), "
                f"{prof['wall_ms_per_stride']:.1f} ms wall per stride under the profiler)",
                "",
                f"All ops together: {prof['self_cpu_ms_per_stride_all_ops']:.1f} ms per stride; not in any op (Python "
                f"between ops): {prof['not_in_any_op_ms_per_stride']:.1f} ms. The profiler inflates small ops; "
                "compare shares, not absolute times, with the table above.",
                "",
                "| op | self CPU ms per stride | % of op time | calls per stride |",
                "|---|---:|---:|---:|",
            ]
            for op in prof["top_ops"]:
                lines.append(f"| `{op['op']}` | {op['self_cpu_ms_per_stride']:.2f} | "
                             f"{_f(op['percent_of_op_time'])} | {op['calls_per_stride']:.0f} |")
        cap = run["capacity_model"]
        lines += ["", f"### Capacity model, {t} thread(s) — a model, not a measurement", ""]
        if cap["fixed_ms"] is None or cap.get("why_none"):
            lines.append(f"No model: {cap.get('why_none')}. "
                         + (f"(fit: fixed {_f(cap['fixed_ms'])} ms, marginal {_f(cap['marginal_ms'], 2)} ms)"
                            if cap["fixed_ms"] is not None else ""))
        else:
            lines += [
                f"Fit over B = {', '.join(map(str, cap['fit_batches']))}: batch ms ≈ **{cap['fixed_ms']:.1f} + "
                f"{cap['marginal_ms']:.2f} × B** (R² {_f(cap['r2'], 3)}). If batches ran back to back, each taking "
                f"every stride that arrived during the previous one, N real-time streams settle at a batch time "
                f"C = fixed / (1 − marginal × N / 600) and a stride's latency is at most 2C. Predicted: 2C reaches "
                f"600 ms at **N ≈ {cap['streams_at_latency_600ms']:.1f}** streams; throughput limit (C → ∞) "
                f"{cap['streams_throughput_limit']:.1f}. B is continuous; where N × C / 600 < 1 strides run alone "
                "(B = 1, C = fixed + marginal). Rows marked * extrapolate beyond the largest measured B.",
                "",
                "| streams N | batch time C ms | batch size B | latency bound 2C ms |",
                "|---:|---:|---:|---:|",
            ]
            for p in cap["by_streams"]:
                mark = " *" if p["extrapolated"] else ""
                lines.append(f"| {p['streams']} | {p['batch_ms']:.1f} | {p['batch']:.1f}{mark} | "
                             f"{p['latency_bound_ms']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def write(result: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    result = {"name": name, **_metadata(), "note": NOTE, **result}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    paths[0].write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    paths[1].write_text(markdown(result))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="tiny-random, large-random, or a model dir (default large-random; "
                                        "tiny-random with --quick)")
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 and all cores)")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help=f"batch sizes (default {' '.join(map(str, DEFAULT_BATCH_SIZES))})")
    parser.add_argument("--strides", type=int, help=f"timed strides per batch size (default {DEFAULT_STRIDES})")
    parser.add_argument("--profile-strides", type=int,
                        help=f"strides of the largest batch under torch.profiler (default {DEFAULT_PROFILE_STRIDES}, "
                             "1 with --quick; 0: no profile)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the result files")
    parser.add_argument("--name", help="result file stem (default: batch-profile-<model>[-quick])")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="as PARASTREAM_PRECISION")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="as PARASTREAM_BACKEND")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny-random, 1 thread, B = 1, 2, 4, 2 strides, small matmul peak")
    args = parser.parse_args(argv)

    quick = QUICK if args.quick else {}
    model_dir = resolve_model(args.model or quick.get("model", "large-random"))
    if not Path(model_dir).is_dir():
        raise SystemExit(f"--model {args.model!r}: no such model directory")
    threads = args.threads or quick.get("threads") or sorted({1, usable_cores()})
    batch_sizes = args.batch_sizes or quick.get("batch_sizes") or list(DEFAULT_BATCH_SIZES)
    strides = args.strides or quick.get("strides") or DEFAULT_STRIDES
    result = profile_batches(
        Path(model_dir), threads, batch_sizes, strides,
        profile_strides=args.profile_strides if args.profile_strides is not None else (1 if args.quick else
                                                                                        DEFAULT_PROFILE_STRIDES),
        flop_strides=1 if args.quick else DEFAULT_FLOP_STRIDES,
        matmul_sizes=QUICK_MATMUL_SIZES if args.quick else None,
        matmul_reps=2 if args.quick else None,
        precision=args.precision,
        backend=args.backend,
    )
    result["settings"]["mode"] = "quick" if args.quick else "full"
    suffix = ("" if args.backend == "torch" else f"-{args.backend}") + ("" if args.precision == "fp32" else f"-{args.precision}")
    suffix += "-quick" if args.quick else ""
    name = args.name or f"batch-profile-{Path(model_dir).name.removesuffix('-seed0')}{suffix}"
    for path in write(result, args.out, name):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
