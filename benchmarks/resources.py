"""Samples CPU and memory of a process tree through a run, from /proc (no extra dependencies).

CPU is the share of one core each process used between samples (100 % = one core busy). Memory is PSS (each shared
page split between the processes that map it) and private (pages only this process maps), from
/proc/PID/smaps_rollup, so forked workers sharing the model's weights are counted honestly.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from benchmarks.common import cmdline, parent_of, smaps_rollup

_TICK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = parent_of(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def memory_kb(pid: int) -> dict[str, int]:
    """kB figures: Rss, Pss, Private (clean + dirty), Shared; {} once the process is gone."""
    try:
        s = {key: n // 1024 for key, n in smaps_rollup(pid).items()}
    except OSError:
        return {}
    return {
        "rss_kb": s.get("Rss", 0),
        "pss_kb": s.get("Pss", 0),
        "private_kb": s.get("Private_Clean", 0) + s.get("Private_Dirty", 0),
        "shared_kb": s.get("Shared_Clean", 0) + s.get("Shared_Dirty", 0),
    }


def role(pid: int, root: int) -> str:
    """A stable label for a process in a tree: api, model-host, worker, resource-tracker or baseline."""
    cmd = cmdline(pid)
    if pid == root:
        return "api" if "app.cli" in cmd else "server"
    if "resource_tracker" in cmd:
        return "resource-tracker"
    if "spawn_main" in cmd:
        try:
            parent = parent_of(pid)
        except OSError:
            parent = -1
        return "model-host" if parent == root else "worker"
    return "other"


@dataclass
class ProcessStats:
    role: str
    cpu_percent: list[float] = field(default_factory=list)
    pss_kb: list[int] = field(default_factory=list)
    private_kb: list[int] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        def mean(xs: list[float] | list[int]) -> float:
            return round(sum(xs) / len(xs), 1) if xs else 0.0

        return {
            "role": self.role,
            "cpu_percent_mean": mean(self.cpu_percent),
            "cpu_percent_max": round(max(self.cpu_percent), 1) if self.cpu_percent else 0.0,
            "pss_mb_max": round(max(self.pss_kb, default=0) / 1024, 1),
            "private_mb_max": round(max(self.private_kb, default=0) / 1024, 1),
            "rss_mb_max": round(max(self.rss_kb, default=0) / 1024, 1),
            "samples": len(self.pss_kb),
        }


class ResourceSampler:
    """Samples a process tree every `interval` seconds on a background thread while in a `with` block."""

    def __init__(self, root_pid: int, interval: float = 0.5) -> None:
        self.root = root_pid
        self.interval = interval
        self.stats: dict[int, ProcessStats] = {}
        self._last_cpu: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ResourceSampler:
        self._sample()  # baseline for CPU deltas
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        now = time.monotonic()
        for pid in [self.root, *descendants(self.root)]:
            cpu = _cpu_seconds(pid)
            mem = memory_kb(pid)
            if cpu is None or not mem:
                continue
            stats = self.stats.setdefault(pid, ProcessStats(role(pid, self.root)))
            if pid in self._last_cpu:
                t0, c0 = self._last_cpu[pid]
                if now > t0:
                    stats.cpu_percent.append(100.0 * (cpu - c0) / (now - t0))
            self._last_cpu[pid] = (now, cpu)
            stats.pss_kb.append(mem["pss_kb"])
            stats.private_kb.append(mem["private_kb"])
            stats.rss_kb.append(mem["rss_kb"])

    def summary(self) -> dict[str, object]:
        procs = {str(pid): s.summary() for pid, s in self.stats.items() if s.pss_kb}
        return {
            "processes": procs,
            "cpu_percent_total_mean": round(sum(p["cpu_percent_mean"] for p in procs.values()), 1),  # type: ignore[misc]
            "pss_mb_total_max": round(sum(p["pss_mb_max"] for p in procs.values()), 1),  # type: ignore[misc]
        }
