"""One benchmark run: every system on the same model, audio and machine, with a capacity search for each.

Capacity is the largest number of concurrent real-time streams whose p95 partial latency stays within the limit
(600 ms), whose every stream keeps up (processing never more than one stride behind) with no errors, and whose
clients could send in real time (no append schedule slipped by more than the limit). The search
doubles N from 1 until a trial fails, then bisects between the last pass and the first failure.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import server_metrics
from benchmarks.audio import synth_speechlike
from benchmarks.common import percentile
from benchmarks.loadgen import StreamResult, run_trial
from benchmarks.references import references
from benchmarks.resources import ResourceSampler
from benchmarks.systems import RunningSystem, SystemSpec, all_systems

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    model_dir: Path
    clip_seconds: float = 12.0
    distinct_clips: int = 16  # clients beyond this reuse clips (with their own start offsets)
    max_streams: int = 64
    fixed_ns: list[int] | None = None  # quick mode: exactly these N, no search
    latency_limit_ms: float = 600.0
    systems: list[str] | None = None  # names to run; None = all
    bound_strides: int = 40
    bound_threads: list[int] | None = None
    light_load_trials: int = 3  # one-stream trials pooled for the light-load latency (the search's N=1 included)
    extra: dict[str, Any] = field(default_factory=dict)


def make_clips(config: RunConfig) -> list[np.ndarray]:
    seconds = config.clip_seconds
    return [synth_speechlike(seconds, seed=1000 + i) for i in range(config.distinct_clips)]


def summarize_trial(n: int, results: list[StreamResult], refs: list[list[str]], limit_ms: float) -> dict[str, Any]:
    partial = [ms for r in results for ms in r.partial_ms]
    finals = [r.final_ms for r in results if r.final_ms is not None]
    appends = [ms for r in results for ms in r.append_ms]
    wrong = sum(1 for r in results if r.tokens is not None and r.tokens != refs[r.index % len(refs)])
    errors = [e for r in results for e in r.errors]
    keeps_up = sum(1 for r in results if r.keeps_up)
    p95 = percentile(partial, 95)
    # A client that could not send in real time (its appends blocked) is not a real-time stream any more: a server
    # that slows its clients down must not pass on the latency of the audio it let in.
    send_lag = max((r.send_lag_ms for r in results), default=0.0)
    passed = (
        bool(partial) and p95 is not None and p95 <= limit_ms and keeps_up == n and not errors and send_lag <= limit_ms
    )
    return {
        "streams": n,
        "partial_ms": {"p50": percentile(partial, 50), "p95": p95, "p99": percentile(partial, 99), "count": len(partial)},
        "final_ms": {"p50": percentile(finals, 50), "p95": percentile(finals, 95)},
        "append_ms": {"p50": percentile(appends, 50), "p95": percentile(appends, 95)},
        "max_behind_strides": max((r.behind_strides for r in results), default=0),
        "max_send_lag_ms": round(max((r.send_lag_ms for r in results), default=0.0), 1),
        "streams_keeping_up": keeps_up,
        "errors": len(errors),
        "error_examples": errors[:3],
        "finals": sum(1 for r in results if r.tokens is not None),
        "wrong_transcripts": wrong,
        "passed": passed,
    }


def _next_n(tried: dict[int, bool], max_n: int) -> int | None:
    passes = [n for n, ok in tried.items() if ok]
    fails = [n for n, ok in tried.items() if not ok]
    best = max(passes, default=0)
    worst = min((n for n in fails if n > best), default=None)
    if worst is None:
        nxt = max(1, best * 2)
        return nxt if nxt <= max_n and nxt not in tried else None
    if worst - best <= 1:
        return None
    return (best + worst) // 2


def bench_system(spec: SystemSpec, config: RunConfig, clips: list[np.ndarray], refs: list[list[str]], bar: tqdm) -> dict[str, Any]:
    trials: list[dict[str, Any]] = []
    tried: dict[int, bool] = {}
    light: list[float] = []  # partial latencies of every one-stream trial
    with RunningSystem(spec, config.model_dir) as system:
        queue = list(config.fixed_ns) if config.fixed_ns else [1]
        while queue:
            n = queue.pop(0)
            bar.set_description(f"{spec.name} N={n}")
            trial_clips = [clips[i % len(clips)] for i in range(n)]
            before = server_metrics.scrape(system.base_url)
            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            with ResourceSampler(system.pid) as sampler:
                results = asyncio.run(run_trial(system.base_url, trial_clips, spec.session_options))
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            summary = summarize_trial(n, results, refs, config.latency_limit_ms)
            summary["resources"] = sampler.summary()
            # The load generator shares the cores with the system under test: say how much it took.
            summary["loadgen_cpu_s"] = round(
                (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime), 2
            )
            summary["server"] = server_metrics.trial_summary(before, server_metrics.scrape(system.base_url))
            if n == 1:
                light.extend(ms for r in results for ms in r.partial_ms)
            trials.append(summary)
            tried[n] = summary["passed"]
            bar.update(1)
            bar.set_postfix(p95=summary["partial_ms"]["p95"], ok=summary["passed"])
            if not config.fixed_ns and (nxt := _next_n(tried, config.max_streams)) is not None:
                queue.append(nxt)
        # Light load, measured apart from the search: does batching cost a lone stream anything? (It must not.)
        for _ in range(config.light_load_trials - 1):
            bar.set_description(f"{spec.name} light load")
            results = asyncio.run(run_trial(system.base_url, clips[:1], spec.session_options))
            light.extend(ms for r in results for ms in r.partial_ms)
    passing = [t["streams"] for t in trials if t["passed"]]
    return {
        "name": spec.name,
        "description": spec.description,
        "capacity_streams": max(passing, default=0),
        "light_load_partial_ms": {
            "trials": config.light_load_trials,
            "count": len(light),
            "p50": percentile(light, 50),
            "p95": percentile(light, 95),
        },
        "trials": sorted(trials, key=lambda t: t["streams"]),
    }


def run_benchmark(config: RunConfig) -> dict[str, Any]:
    from benchmarks.bound import measure_bound

    specs = [s for s in all_systems(config.model_dir) if config.systems is None or s.name in config.systems]
    clips = make_clips(config)
    keys = list(dict.fromkeys((s.precision, s.look_back) for s in specs))
    log.info("computing in-process references for %d clips (%s)", len(clips),
             ", ".join(f"{precision}, look-back {look_back}" for precision, look_back in keys))
    refs = references(config.model_dir, clips, keys)
    systems = []
    with tqdm(unit="trial", dynamic_ncols=True) as bar:
        for spec in specs:
            systems.append(bench_system(spec, config, clips, refs[(spec.precision, spec.look_back)], bar))
    bar_bound = measure_bound(config.model_dir, strides=config.bound_strides, threads=config.bound_threads)
    return {
        "config": {
            "model_dir": str(config.model_dir),
            "clip_seconds": config.clip_seconds,
            "distinct_clips": config.distinct_clips,
            "latency_limit_ms": config.latency_limit_ms,
            "frame_ms": 100,
            "stride_ms": 600,
            **config.extra,
        },
        "systems": systems,
        "bound": bar_bound,
    }
