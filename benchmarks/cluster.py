"""Cluster mode's two figures: capacity with one node and with two behind HAProxy, and what replication costs.

    python -m benchmarks.cluster --model large-random [--max-streams 12] [--clip-seconds 24]

Each configuration is a whole cluster on this machine (benchmarks/cluster_rig.py: Redis, the nodes, HAProxy on
deploy/haproxy.cfg), node i pinned to core i (`taskset -c i`), one worker per node. Its capacity is found exactly
as benchmarks/run.py finds a system's: real-time clients of benchmarks/loadgen.py, pointed at HAProxy's address,
the same pass rule (`summarize_trial`: p95 partial latency within the limit, every stream keeping up, no errors,
every client sending in real time) and the same search (`_next_n`: doubling N, then bisecting), each transcript
held token for token to FunASR's own loop on the same audio (benchmarks/references.py).

Configurations (`cluster_replicate_strides` is K: a session's snapshot is copied to Redis every K strides):

- `1-node-no-replication`: K = 1,000,000, so no snapshot is ever copied. The node is still a cluster node: it
  registers each session in Redis when it is created (a small record, no snapshot) and writes its events when it
  ends. That is the baseline the replication costs are measured against.
- `1-node-K10`: the default, a snapshot every 10 strides (6 s of audio).
- `1-node-K1`: a snapshot after every stride (the most a node can copy).
- `2-nodes-K10`: two nodes, the default K; new sessions split between them by HAProxy's weighted round robin.

Per trial, on top of run.py's figures: the CPU of each node's process tree, of Redis and of HAProxy (sampled from
/proc by benchmarks/resources.py), the load generator's own CPU, Redis's memory, and from each node's /metrics the
strides it computed and the replicas it wrote (count, bytes, capture and write time). Bytes per second per session
is the replicas' bytes over the trial's session-seconds of audio. Results go to
benchmarks/results/cluster-<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import server_metrics
from benchmarks.cluster_rig import Cluster
from benchmarks.common import RESULTS, ROOT, git_commit, machine, now_utc, resolve_model
from benchmarks.loadgen import run_trial
from benchmarks.references import reference_tokens
from benchmarks.report import versions
from benchmarks.resources import ResourceSampler
from benchmarks.run import RunConfig, _next_n, make_clips, summarize_trial

log = logging.getLogger(__name__)

NO_REPLICATION = 1_000_000  # strides: a 12 s clip has 20, so no snapshot is ever copied
SAMPLE_RATE = 16_000
STRIDE_S = 0.6
SAMPLE_EVERY_S = 1.0  # four samplers scan /proc in the load generator's process: not more often than this
CAPTURE = "parastream_cluster_replica_capture_seconds"
WRITE = "parastream_cluster_replica_write_seconds"
NOTE = (
    "Everything runs on this one machine: the nodes are pinned one to a core, but HAProxy, Redis and the load "
    "generator are not pinned and share those same cores with them, so the two-node capacity is a lower bound on "
    "what two machines would give. The models have random weights (built from FunASR's real streaming Paraformer "
    "architecture): these figures measure serving cost, never accuracy. 'Wrong transcripts' compares each served "
    "transcript with FunASR's own single-process loop on the same audio, token for token."
)


@dataclass(frozen=True)
class Setup:
    name: str
    nodes: int
    replicate_strides: int
    description: str


SETUPS = [  # in the order they are run: the scaling pair first
    Setup("1-node-K10", 1, 10, "1 node, snapshot copied every 10 strides (the default)"),
    Setup("2-nodes-K10", 2, 10, "2 nodes, snapshot copied every 10 strides (the default)"),
    Setup("1-node-no-replication", 1, NO_REPLICATION,
          "1 node, no snapshot ever copied (sessions registered at create, events written at the end)"),
    Setup("1-node-K1", 1, 1, "1 node, snapshot copied after every stride"),
]
TABLE_ORDER = ["1-node-no-replication", "1-node-K10", "1-node-K1", "2-nodes-K10"]


# ------------------------------------------------------------------------------------------------ /metrics


def scrape_cluster(base_url: str) -> dict[str, float]:
    """Every sample of the node's `parastream_cluster_*` families: counters by name, histogram buckets as
    `<name>_bucket{le=<bound>}`."""
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    response.raise_for_status()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if not family.name.startswith("parastream_cluster_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = f"{sample.name}{{le={sample.labels['le']}}}" if "le" in sample.labels else sample.name
            values[key] = sample.value
    return values


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after}


def histogram_ms(d: dict[str, float], name: str) -> dict[str, Any]:
    """Count, mean and the bucket bound the 95th percentile falls under (ms) of a histogram's change `d`."""
    count = d.get(f"{name}_count", 0.0)
    if not count:
        return {"count": 0, "mean_ms": None, "p95_ms_at_most": None}
    prefix = f"{name}_bucket{{le="
    buckets = sorted((float(key[len(prefix):-1]), value) for key, value in d.items() if key.startswith(prefix))
    p95 = next((bound for bound, cumulative in buckets if cumulative >= 0.95 * count), math.inf)
    top = max((bound for bound, _ in buckets if not math.isinf(bound)), default=0.0)
    return {
        "count": int(count),
        "mean_ms": round(1000 * d.get(f"{name}_sum", 0.0) / count, 2),
        "p95_ms_at_most": None if math.isinf(p95) else round(1000 * p95, 2),  # None: above the last finite bucket
        "top_ms": round(1000 * top, 2),
    }


def steady_mb_per_s(mb_per_replica: float | None, replicate_strides: int) -> float | None:
    """A long session's rate: one replica every K strides (a trial's clips end before their last replica)."""
    if mb_per_replica is None or replicate_strides >= NO_REPLICATION:
        return None
    return round(mb_per_replica / (replicate_strides * STRIDE_S), 2)


def replication(per_node: list[dict[str, float]], session_seconds: float) -> dict[str, Any]:
    """What the nodes of one trial replicated (their /metrics changes over it, summed), and per session-second."""
    total: dict[str, float] = {}
    for d in per_node:
        for key, value in d.items():
            total[key] = total.get(key, 0.0) + value
    replicas = int(total.get("parastream_cluster_replicas_total", 0.0))
    size = int(total.get("parastream_cluster_replica_bytes_total", 0.0))
    return {
        "replicas": replicas,
        "replica_bytes": size,
        "session_seconds": round(session_seconds, 1),
        "mb_per_s_per_session": round(size / session_seconds / 1e6, 3) if session_seconds else None,
        "mb_per_replica": round(size / replicas / 1e6, 2) if replicas else None,
        "capture_ms": histogram_ms(total, CAPTURE),
        "write_ms": histogram_ms(total, WRITE),
        "takeovers": int(total.get("parastream_cluster_takeovers_total", 0.0)),
    }


# ------------------------------------------------------------------------------------------------ one trial


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu(sampler: ResourceSampler) -> dict[str, float]:
    """Mean CPU % of a sampled process tree, in all and by role (api, worker, model-host...)."""
    procs: dict[str, Any] = sampler.summary()["processes"]  # type: ignore[assignment]
    by_role: dict[str, float] = {}
    for proc in procs.values():
        by_role[proc["role"]] = round(by_role.get(proc["role"], 0.0) + proc["cpu_percent_mean"], 1)
    return {"total": round(sum(by_role.values()), 1), **by_role}


def _redis_memory(url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info("memory")
        return {"used_memory_mb": round(info["used_memory"] / 1e6), "keys": int(client.dbsize())}
    finally:
        client.close()


def trial(cluster: Cluster, clips: list[np.ndarray], refs: list[list[str]], limit_ms: float) -> dict[str, Any]:
    n = len(clips)
    stride_before = [server_metrics.scrape(node.base_url) for node in cluster.nodes]
    cluster_before = [scrape_cluster(node.base_url) for node in cluster.nodes]
    roots = {node.name: node.pid for node in cluster.nodes} | {"redis": cluster.redis.pid, "haproxy": cluster.haproxy.pid}
    cpu0, wall0 = _cpu_self(), time.monotonic()
    with contextlib.ExitStack() as stack:
        samplers = {name: stack.enter_context(ResourceSampler(pid, SAMPLE_EVERY_S)) for name, pid in roots.items()}
        results = asyncio.run(run_trial(cluster.url, clips))
    loadgen_cpu, wall = _cpu_self() - cpu0, time.monotonic() - wall0
    summary = summarize_trial(n, results, refs, limit_ms)
    cluster_d = [delta(b, scrape_cluster(node.base_url)) for b, node in zip(cluster_before, cluster.nodes)]
    per_node = []
    for node, before, d in zip(cluster.nodes, stride_before, cluster_d):
        strides = server_metrics.trial_summary(before, server_metrics.scrape(node.base_url)) or {}
        per_node.append({
            "node": node.name,
            "cpu_percent": _cpu(samplers[node.name]),
            "strides": strides.get("strides", 0),
            "batch_size_mean": strides.get("batch_size_mean"),
            "forward_ms_mean": strides.get("forward_ms_mean"),
            "replicas": int(d.get("parastream_cluster_replicas_total", 0.0)),
        })
    summary["nodes"] = per_node
    summary["node_cpu_percent"] = round(sum(p["cpu_percent"]["total"] for p in per_node), 1)
    summary["redis_cpu_percent"] = _cpu(samplers["redis"])["total"]
    summary["haproxy_cpu_percent"] = _cpu(samplers["haproxy"])["total"]
    summary["loadgen_cpu_s"] = round(loadgen_cpu, 2)
    summary["loadgen_cpu_percent"] = round(100 * loadgen_cpu / wall, 1)
    # What competes with the nodes for the machine's cores: the load generator (its samplers included), HAProxy, Redis.
    summary["others_cpu_percent"] = round(
        summary["loadgen_cpu_percent"] + summary["redis_cpu_percent"] + summary["haproxy_cpu_percent"], 1
    )
    summary["wall_s"] = round(wall, 1)
    summary["redis_after"] = _redis_memory(cluster.redis.url)
    summary["replication"] = replication(cluster_d, sum(len(c) for c in clips) / SAMPLE_RATE)
    return summary


# ------------------------------------------------------------------------------------------------ a configuration


def bench_setup(
    setup: Setup, model_dir: Path, clips: list[np.ndarray], refs: list[list[str]], max_n: int, limit_ms: float
) -> dict[str, Any]:
    trials: list[dict[str, Any]] = []
    tried: dict[int, bool] = {}
    started = time.monotonic()
    cluster = Cluster(
        model_dir, nodes=setup.nodes, pin=True, cluster_replicate_strides=setup.replicate_strides,
        cluster_node_ttl_s=3.0, max_sessions=1024, session_idle_timeout_s=120,
    )
    with cluster:
        ready_s = time.monotonic() - started
        n: int | None = 1
        while n is not None:
            t = trial(cluster, [clips[i % len(clips)] for i in range(n)], refs, limit_ms)
            trials.append(t)
            tried[n] = t["passed"]
            log.info(
                "%s N=%d: %s, p95 %s ms, behind %d, send lag %s ms, errors %d, wrong %d, node CPU %s %%, Redis %s %%, "
                "%d replicas", setup.name, n, "pass" if t["passed"] else "FAIL", t["partial_ms"]["p95"],
                t["max_behind_strides"], t["max_send_lag_ms"], t["errors"], t["wrong_transcripts"],
                t["node_cpu_percent"], t["redis_cpu_percent"], t["replication"]["replicas"],
            )
            n = _next_n(tried, max_n)
        haproxy_status = {name: row["status"] for name, row in cluster.haproxy.servers().items()}
    cluster.remove_logs()
    return summarize_setup(setup, trials, ready_s, time.monotonic() - started, haproxy_status)


def summarize_setup(
    setup: Setup, trials: list[dict[str, Any]], ready_s: float, wall_s: float, haproxy_status: dict[str, str]
) -> dict[str, Any]:
    trials = sorted(trials, key=lambda t: t["streams"])
    passing = [t["streams"] for t in trials if t["passed"]]
    capacity = max(passing, default=0)
    rep = [t["replication"] for t in trials]
    replicas = sum(r["replicas"] for r in rep)
    size = sum(r["replica_bytes"] for r in rep)
    seconds = sum(r["session_seconds"] for r in rep)
    return {
        "name": setup.name,
        "description": setup.description,
        "nodes": setup.nodes,
        "replicate_strides": setup.replicate_strides,
        "capacity_streams": capacity,
        "wrong_transcripts": sum(t["wrong_transcripts"] for t in trials),
        "finals": sum(t["finals"] for t in trials),
        "all_trials": {  # replication pooled over every trial of the search
            "replicas": replicas,
            "replica_bytes": size,
            "session_seconds": round(seconds, 1),
            "mb_per_s_per_session": round(size / seconds / 1e6, 3) if seconds else None,
            "mb_per_replica": round(size / replicas / 1e6, 2) if replicas else None,
            "steady_mb_per_s_per_session": steady_mb_per_s(size / replicas / 1e6 if replicas else None,
                                                           setup.replicate_strides),
        },
        "ready_s": round(ready_s, 1),
        "wall_s": round(wall_s, 1),
        "haproxy_status_at_end": haproxy_status,
        "trials": trials,
    }


def at_capacity(setup: dict[str, Any]) -> dict[str, Any]:
    """The trial at the setup's capacity (the smallest one tried when none passed)."""
    trials = setup["trials"]
    return next((t for t in trials if t["streams"] == setup["capacity_streams"]), trials[0])


def common_load(setups: list[dict[str, Any]]) -> int | None:
    """The largest N every one-node setup tried and passed: the load at which their costs compare like for like."""
    ones = [s for s in setups if s["nodes"] == 1]
    passed = [{t["streams"] for t in s["trials"] if t["passed"]} for s in ones]
    shared = set.intersection(*passed) if passed else set()
    return max(shared, default=None)


# ------------------------------------------------------------------------------------------------ report


def _f(value: Any, suffix: str = "") -> str:
    return "–" if value is None else f"{value}{suffix}"


def _k(s: dict[str, Any]) -> str:
    return "never" if s["replicate_strides"] >= NO_REPLICATION else str(s["replicate_strides"])


def _ms(h: dict[str, Any]) -> str:
    if not h["count"]:
        return "–"
    p95 = h["p95_ms_at_most"]
    return f"{h['mean_ms']} / {'≤ ' + str(p95) if p95 is not None else '> ' + str(h['top_ms'])}"


def _cpu_cell(t: dict[str, Any]) -> str:
    nodes = t["nodes"]
    if len(nodes) == 1:
        c = nodes[0]["cpu_percent"]
        return f"{c['total']} (API {c.get('api', 0.0)})"
    return " + ".join(str(p["cpu_percent"]["total"]) for p in nodes)


def _row(s: dict[str, Any], t: dict[str, Any], first: str) -> str:
    r = t["replication"]
    return (
        f"| {first} | {s['nodes']} | {_k(s)} | {t['streams']} | {_f(t['partial_ms']['p95'])} | {_cpu_cell(t)} | "
        f"{t['redis_cpu_percent']} | {t['haproxy_cpu_percent']} | {t['loadgen_cpu_percent']} | {r['replicas']} | "
        f"{_f(r['mb_per_replica'])} | {_f(r['mb_per_s_per_session'])} | "
        f"{_f(steady_mb_per_s(r['mb_per_replica'], s['replicate_strides']))} | {_ms(r['capture_ms'])} | "
        f"{_ms(r['write_ms'])} | "
        f"{t['redis_after']['used_memory_mb']} |"
    )


HEADER = (
    "| config | nodes | K | streams | p95 partial ms | node CPU % | Redis CPU % | HAProxy CPU % | load-gen CPU % | "
    "replicas | MB per replica | MB/s per session (trial) | MB/s per session (long session) | capture ms mean / p95 | "
    "write ms mean / p95 | Redis MB after |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
)


def markdown(r: dict[str, Any]) -> str:
    m, c = r["machine"], r["config"]
    setups = sorted(r["setups"], key=lambda s: TABLE_ORDER.index(s["name"]) if s["name"] in TABLE_ORDER else 99)
    by_name = {s["name"]: s for s in setups}
    lines = [
        f"# Cluster benchmark `{r['name']}`",
        "",
        f"- Model: `{Path(c['model_dir']).name}`; {c['distinct_clips']} distinct synthetic speech-like clips of "
        f"{c['clip_seconds']} s streamed at real time in 100 ms frames, clients staggered over one stride; "
        f"N searched up to {c['max_streams']}.",
        f"- Each configuration: Redis {c['redis_version']}, HAProxy {c['haproxy_version']} on deploy/haproxy.cfg, "
        "nodes of one worker each, node i pinned to core i (`taskset -c i`); clients connect to HAProxy only.",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        + f". Commit `{r['commit']}`, {r['date']}. Wall time {r['wall_s'] / 60:.1f} min.",
        "",
        f"> {r['note']}",
        "",
        f"## Capacity: concurrent real-time streams with p95 partial latency ≤ {c['latency_limit_ms']:g} ms, all "
        "keeping up, all sent in real time",
        "",
        "| config | nodes | K (strides per replica) | capacity (streams) | streams tried | wrong transcripts (all trials) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for s in setups:
        tried = ", ".join(f"{t['streams']}{'' if t['passed'] else '✗'}" for t in s["trials"])
        lines.append(f"| {s['description']} (`{s['name']}`) | {s['nodes']} | {_k(s)} | **{s['capacity_streams']}** | "
                     f"{tried} | {s['wrong_transcripts']} of {s['finals']} |")
    one, two = by_name.get("1-node-K10"), by_name.get("2-nodes-K10")
    if one and two and one["capacity_streams"]:
        t1, t2 = at_capacity(one), at_capacity(two)
        lines += [
            "",
            f"Two nodes carry **{two['capacity_streams'] / one['capacity_streams']:.2f}×** the streams of one, at the "
            f"same K. At one node's capacity the node used {t1['node_cpu_percent']} % of its core while the load "
            f"generator, HAProxy and Redis used {t1['others_cpu_percent']} % (of 200 %), mostly on the other, "
            f"unpinned core; at two nodes' capacity the nodes used {_cpu_cell(t2)} % and those three "
            f"{t2['others_cpu_percent']} %, now taken from the nodes' own cores.",
        ]
    lines += [
        "",
        "## Replication cost at each configuration's capacity",
        "",
        "Figures of the trial at capacity. Node CPU: each node's whole process tree (API process, model host, "
        "worker), 100 % = one core, with the API process's share (where replicas are captured and written) in "
        "brackets; two nodes: one figure each. Load-gen CPU: the load generator's own process (its CPU samplers "
        "included), which like Redis and HAProxy runs on the same two cores. Capture: the event-loop time to copy a "
        "replica out of shared memory; write: from the capture to Redis confirming it (pickling included). p95 is the "
        "histogram bucket bound it falls under. MB = 10⁶ bytes. MB/s per session (trial): replica bytes / "
        "session-seconds of audio in the trial; a clip's last stride is its final one, which is never replicated, "
        "so a trial's sessions copy fewer replicas than a long session would: (long session) is MB per replica / "
        "(K × 0.6 s). Redis MB after: its used memory once the trial ended (an ended session's record, its last "
        "replica included, stays for PARASTREAM_FINISHED_SESSION_TTL_S).",
        "",
        *HEADER,
    ]
    for s in setups:
        lines.append(_row(s, at_capacity(s), f"`{s['name']}`"))
    load = common_load(setups)
    if load is not None:
        lines += [
            "",
            f"## Same load: {load} streams on one node",
            "",
            f"The one-node configurations at N = {load} (the largest N every one of them passed), so that their "
            "costs compare like for like.",
            "",
            *HEADER,
        ]
        for s in setups:
            if s["nodes"] == 1:
                t = next(t for t in s["trials"] if t["streams"] == load)
                lines.append(_row(s, t, f"`{s['name']}`"))
    lines += [
        "",
        "## Replication pooled over every trial",
        "",
        "| config | replicas | MB per replica | MB/s per session (trials) | MB/s per session (long session) | "
        "session-seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in setups:
        a = s["all_trials"]
        lines.append(f"| `{s['name']}` | {a['replicas']} | {_f(a['mb_per_replica'])} | "
                     f"{_f(a['mb_per_s_per_session'])} | {_f(a['steady_mb_per_s_per_session'])} | "
                     f"{a['session_seconds']} |")
    lines += [
        "",
        "## Every trial",
        "",
        "Strides per node: how the sessions split between the nodes (HAProxy's weighted round robin). Others CPU: "
        "load generator + HAProxy + Redis, what competes with the nodes for the two cores.",
        "",
        "| config | N | partial p50 / p95 ms | max behind | max send lag ms | errors | wrong | node CPU % | "
        "Redis CPU % | others CPU % | strides per node | replicas | MB/s per session | pass |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|:-:|",
    ]
    for s in setups:
        for t in s["trials"]:
            p, rep = t["partial_ms"], t["replication"]
            lines.append(
                f"| `{s['name']}` | {t['streams']} | {_f(p['p50'])} / {_f(p['p95'])} | {t['max_behind_strides']} | "
                f"{t['max_send_lag_ms']} | {t['errors']} | {t['wrong_transcripts']} | {_cpu_cell(t)} | "
                f"{t['redis_cpu_percent']} | {t['others_cpu_percent']} | "
                f"{' / '.join(str(n['strides']) for n in t['nodes'])} | {rep['replicas']} | "
                f"{_f(rep['mb_per_s_per_session'])} | {'✓' if t['passed'] else '✗'} |"
            )
    lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = (out.stdout or out.stderr).split()
    return next((w.removeprefix("v=") for w in words if w[:1].isdigit() or w.startswith("v=")), "unknown")


def _dirty() -> list[str]:
    """Tracked files with uncommitted changes while the benchmark ran (its nodes ran them as they were)."""
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                         text=True, timeout=10).stdout
    return [line[3:] for line in out.splitlines()]


def run(model_dir: Path, max_streams: int, clip_seconds: float, names: list[str] | None) -> dict[str, Any]:
    started = time.monotonic()
    commit, dirty, date = git_commit(), _dirty(), now_utc()  # what the nodes run: taken before they start
    config = RunConfig(model_dir=model_dir, clip_seconds=clip_seconds, distinct_clips=min(16, max_streams),
                       max_streams=max_streams)
    clips = make_clips(config)
    log.info("computing FunASR's own loop's transcripts of %d clips", len(clips))
    refs = reference_tokens(model_dir, clips)  # fp32, look-back 4/1: what a session is created with by default
    setups = []
    for setup in SETUPS:
        if names is None or setup.name in names:
            setups.append(bench_setup(setup, model_dir, clips, refs, max_streams, config.latency_limit_ms))
    return {
        "name": f"cluster-{model_dir.name.removesuffix('-seed0')}",
        "date": date,
        "commit": commit,
        "uncommitted_at_start": dirty,
        "machine": machine(),
        "versions": versions(),
        "note": NOTE,
        "wall_s": round(time.monotonic() - started, 1),
        "config": {
            "model_dir": str(model_dir),
            "clip_seconds": clip_seconds,
            "distinct_clips": config.distinct_clips,
            "max_streams": max_streams,
            "latency_limit_ms": config.latency_limit_ms,
            "workers_per_node": 1,
            "pinned": True,
            "redis_version": _version(["redis-server", "--version"]),
            "haproxy_version": _version(["/usr/sbin/haproxy", "-v"]),
        },
        "setups": setups,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster")
    parser.add_argument("--model", default="large-random", help="tiny-random, large-random, or a model dir")
    parser.add_argument("--max-streams", type=int, default=12)
    parser.add_argument("--clip-seconds", type=float, default=24.0)
    parser.add_argument("--setups", nargs="*", help=f"a subset of {', '.join(s.name for s in SETUPS)}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", help="result file stem (default: cluster-<model>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    result = run(resolve_model(args.model), args.max_streams, args.clip_seconds, args.setups)
    name = args.name or result["name"]
    result["name"] = name
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (args.out / f"{name}.md").write_text(markdown(result))
    print(f"wrote {args.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
