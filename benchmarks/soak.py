"""Soak: hours-long behaviour in a short run. Sessions open and close continuously at a steady load while memory,
shared-memory segments, file descriptors and errors are recorded over time.

    python -m benchmarks.soak --model tiny-random --streams 40 --minutes 30

Pass line: memory slope (total PSS of the service's processes, fitted after the warm-up) under 1 MB per 10 minutes,
zero errors and wrong transcripts, and once idle at the end: no segment left and as many descriptors as at the start
before the load, give or take the few a service opens once. The suite runs a two-minute version (tests/benchmarks/test_soak.py) that asserts no leak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.client import ParastreamClient
from benchmarks.audio import synth_speechlike
from benchmarks.common import RESULTS, git_commit, machine, resolve_model, usable_cores
from benchmarks.loadgen import run_stream
from benchmarks.references import reference_tokens
from benchmarks.report import versions
from benchmarks.resources import descendants, memory_kb, role
from benchmarks.systems import RunningSystem, SystemSpec, all_systems
from engine.ring import list_segments

# Descriptors a service opens once, lazily, after its first sessions (executor threads' pipes and the like). A leak
# of even one descriptor per session would show as hundreds over a soak.
FD_SLACK = 10


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _size(name: str) -> int:
    try:
        return os.path.getsize(f"/dev/shm/{name}")
    except FileNotFoundError:  # unlinked between listing and looking: a session just ended
        return 0


def _shm(api_pid: int) -> tuple[int, int]:
    names = [n for n in list_segments() if n.startswith(f"parastream_{api_pid}_")]
    return len(names), sum(_size(n) for n in names)


class Timeline:
    """Samples the service every `every` seconds on a thread."""

    def __init__(self, root: int, every: float) -> None:
        self.root, self.every, self.samples = root, every, []
        self.skipped: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, Any]:
        procs = {}
        for pid in [self.root, *descendants(self.root)]:
            mem = memory_kb(pid)
            if mem:
                procs[f"{role(pid, self.root)}-{pid}"] = {**mem, "fds": _fds(pid)}
        segments, shm_bytes = _shm(self.root)
        return {
            "t": time.monotonic(),
            "processes": procs,
            "pss_mb": sum(p["pss_kb"] for p in procs.values()) / 1024,
            "fds": sum(p["fds"] for p in procs.values()),
            "segments": segments,
            "shm_mb": shm_bytes / 2**20,
        }

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.samples.append(self.sample())
            except OSError as exc:  # a process or file vanished mid-sample: skip this one, never stop sampling
                self.skipped.append(repr(exc))

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _client_loop(base_url: str, index: int, clips: list[np.ndarray], refs: list[list[str]], deadline: float,
                       tally: dict[str, int]) -> None:
    async with ParastreamClient(base_url, timeout=120, max_connections=4) as client:
        k = 0
        await asyncio.sleep(0.6 * index / max(1, tally["clients"]))  # staggered, as in the benchmark
        while time.monotonic() < deadline:
            clip_index = (index + k) % len(clips)
            result = await run_stream(client, index, clips[clip_index], 0.0)
            tally["sessions"] += 1
            tally["errors"] += len(result.errors)
            tally["wrong"] += int(result.tokens is not None and result.tokens != refs[clip_index])
            k += 1


def run_soak(model_dir: Path, streams: int, seconds: float, sample_every: float, warmup_fraction: float = 0.2) -> dict[str, Any]:
    clips = [synth_speechlike(6.0 + i % 4, seed=2000 + i) for i in range(8)]
    refs = reference_tokens(model_dir, clips)
    spec: SystemSpec = next(s for s in all_systems(model_dir) if s.name == f"parastream-{usable_cores()}w")
    tally = {"clients": streams, "sessions": 0, "errors": 0, "wrong": 0}
    with RunningSystem(spec, model_dir) as system:
        start = Timeline(system.pid, sample_every).sample()
        with Timeline(system.pid, sample_every) as timeline:
            deadline = time.monotonic() + seconds

            async def clients() -> None:
                await asyncio.gather(
                    *(_client_loop(system.base_url, i, clips, refs, deadline, tally) for i in range(streams))
                )

            asyncio.run(clients())
        time.sleep(2 * sample_every)  # let the last sessions end and their segments go
        idle = Timeline(system.pid, sample_every).sample()
        pid = system.pid
    leftover = [n for n in list_segments() if n.startswith(f"parastream_{pid}_")]
    samples = timeline.samples
    t0 = samples[0]["t"] if samples else 0.0
    steady = samples[int(len(samples) * warmup_fraction) :]
    slope = _slope([(s["t"] - t0) / 600, s["pss_mb"]] for s in steady)  # MB per 10 minutes
    result = {
        "model": model_dir.name,
        "system": spec.name,
        "streams": streams,
        "seconds": seconds,
        "samples": len(samples),
        "samples_skipped": len(timeline.skipped),
        "sessions_completed": tally["sessions"],
        "errors": tally["errors"],
        "wrong_transcripts": tally["wrong"],
        "pss_slope_mb_per_10min": round(slope, 3),
        "fds_idle_start": start["fds"],
        "fds_idle_end": idle["fds"],
        "segments_idle_end": idle["segments"],
        "segments_after_stop": len(leftover),
        "pss_mb_start": round(start["pss_mb"], 1),
        "pss_mb_end_idle": round(idle["pss_mb"], 1),
        "timeline": [
            {"t_s": round(s["t"] - t0, 1), "pss_mb": round(s["pss_mb"], 1), "fds": s["fds"], "segments": s["segments"],
             "shm_mb": round(s["shm_mb"], 2),
             "rss_mb": {k: round(v["rss_kb"] / 1024, 1) for k, v in s["processes"].items()},
             "proc_pss_mb": {k: round(v["pss_kb"] / 1024, 1) for k, v in s["processes"].items()}}
            for s in samples
        ],
    }
    result["passed"] = (
        abs(result["pss_slope_mb_per_10min"]) < 1.0 and not result["errors"] and not result["wrong_transcripts"]
        and result["segments_idle_end"] == 0 and result["segments_after_stop"] == 0
        and result["fds_idle_end"] - result["fds_idle_start"] <= FD_SLACK
    )
    return result


def _slope(points: Any) -> float:
    pts = np.array(list(points), dtype=float)
    if len(pts) < 2:
        return 0.0
    return float(np.polyfit(pts[:, 0], pts[:, 1], 1)[0])


def write(result: dict[str, Any], out: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = {"commit": git_commit(), "machine": machine(), "versions": versions(), **result}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    brief = {k: v for k, v in result.items() if k != "timeline"}
    (out / f"{name}.md").write_text(
        f"# Soak `{name}`\n\nRandom-weight model: this measures leaks and stability, not accuracy.\n\n"
        + "| figure | value |\n|---|---:|\n" + "\n".join(f"| {k} | {v} |" for k, v in brief.items()) + "\n"
    )
    tl = result["timeline"]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    t = [s["t_s"] / 60 for s in tl]
    for proc in sorted({p for s in tl for p in s["proc_pss_mb"]}):
        axes[0].plot(t, [s["proc_pss_mb"].get(proc, np.nan) for s in tl], label=proc)
    axes[0].set_ylabel("PSS MB per process")
    axes[0].legend(fontsize=7)
    axes[1].plot(t, [s["fds"] for s in tl])
    axes[1].set_ylabel("open descriptors")
    axes[2].plot(t, [s["segments"] for s in tl])
    axes[2].set_ylabel("/dev/shm segments")
    axes[2].set_xlabel("minutes")
    fig.suptitle(f"soak: {result['streams']} streams, slope {result['pss_slope_mb_per_10min']} MB/10 min")
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--sample-every", type=float, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    model_dir = resolve_model(args.model)
    result = run_soak(model_dir, args.streams, args.minutes * 60, args.sample_every)
    write(result, args.out, f"soak-{model_dir.name.removesuffix('-seed0')}")
    print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
