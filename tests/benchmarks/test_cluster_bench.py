"""The cluster benchmark's arithmetic (benchmarks/cluster.py), on made-up /metrics changes and trials: no cluster runs
here (the benchmark itself takes about twenty minutes on large-random)."""

from __future__ import annotations

from typing import Any

from benchmarks.cluster import (
    CAPTURE,
    NO_REPLICATION,
    WRITE,
    Setup,
    at_capacity,
    common_load,
    histogram_ms,
    markdown,
    replication,
    summarize_setup,
)


def node_delta(replicas: int, size: int, capture_s: list[float], write_s: list[float]) -> dict[str, float]:
    """What a node's /metrics would change by, as benchmarks.cluster.scrape_cluster keys it."""
    d = {"parastream_cluster_replicas_total": float(replicas), "parastream_cluster_replica_bytes_total": float(size)}
    for name, values, bounds in ((CAPTURE, capture_s, (0.001, 0.01, 0.1)), (WRITE, write_s, (0.01, 0.1, 1.0))):
        d[f"{name}_count"] = float(len(values))
        d[f"{name}_sum"] = sum(values)
        for bound in (*bounds, float("inf")):
            label = "+Inf" if bound == float("inf") else str(bound)
            d[f"{name}_bucket{{le={label}}}"] = float(sum(1 for v in values if v <= bound))
    return d


def test_histogram_mean_and_the_bucket_its_95th_percentile_falls_under() -> None:
    d = node_delta(20, 0, [0.0005] * 19 + [0.05], [0.005] * 20)
    assert histogram_ms(d, CAPTURE) == {"count": 20, "mean_ms": 2.98, "p95_ms_at_most": 1.0, "top_ms": 100.0}
    above = histogram_ms(node_delta(1, 0, [0.5], [0.005]), CAPTURE)
    assert above["p95_ms_at_most"] is None and above["top_ms"] == 100.0  # beyond the last finite bucket
    assert histogram_ms({}, WRITE) == {"count": 0, "mean_ms": None, "p95_ms_at_most": None}


def test_replication_sums_the_nodes_and_divides_by_session_seconds() -> None:
    # Two nodes, 12 MB snapshots: 4 sessions of 12 s each, 30 replicas in all.
    nodes = [node_delta(10, 120_000_000, [0.002] * 10, [0.02] * 10), node_delta(20, 240_000_000, [0.004] * 20, [0.04] * 20)]
    r = replication(nodes, 48.0)
    assert r["replicas"] == 30 and r["replica_bytes"] == 360_000_000
    assert r["mb_per_replica"] == 12.0 and r["mb_per_s_per_session"] == 7.5
    assert r["capture_ms"]["mean_ms"] == round(1000 * (0.02 + 0.08) / 30, 2)
    assert r["write_ms"]["count"] == 30
    nothing = replication([node_delta(0, 0, [], [])], 48.0)
    assert nothing["replicas"] == 0 and nothing["mb_per_replica"] is None and nothing["capture_ms"]["mean_ms"] is None


def trial(n: int, passed: bool, nodes: int = 1, replicas: int = 0) -> dict[str, Any]:
    per_node = [{"node": f"node{i + 1}", "cpu_percent": {"total": 90.0, "api": 20.0}, "strides": 20 * n // nodes,
                 "replicas": replicas // nodes} for i in range(nodes)]
    return {
        "streams": n, "passed": passed, "finals": n, "wrong_transcripts": 0, "errors": 0, "max_behind_strides": 0,
        "max_send_lag_ms": 0.0, "partial_ms": {"p50": 200.0, "p95": 300.0 if passed else 900.0},
        "nodes": per_node, "node_cpu_percent": 90.0 * nodes, "redis_cpu_percent": 3.0, "haproxy_cpu_percent": 1.0,
        "loadgen_cpu_s": 2.0, "loadgen_cpu_percent": 15.0, "others_cpu_percent": 19.0, "redis_after": {"used_memory_mb": 40, "keys": 3 * n},
        "replication": replication([node_delta(replicas, replicas * 12_000_000, [0.003] * replicas,
                                               [0.03] * replicas)], 12.0 * n),
    }


def test_a_setup_summary_and_its_report() -> None:
    one = summarize_setup(Setup("1-node-K10", 1, 10, "one"), [trial(4, False, replicas=8), trial(1, True, replicas=2),
                          trial(2, True, replicas=4), trial(3, True, replicas=6)], 30.0, 100.0, {"node1": "UP"})
    assert one["capacity_streams"] == 3 and [t["streams"] for t in one["trials"]] == [1, 2, 3, 4]
    assert at_capacity(one)["streams"] == 3
    assert one["all_trials"]["replicas"] == 20 and one["all_trials"]["mb_per_replica"] == 12.0
    assert one["all_trials"]["mb_per_s_per_session"] == round(20 * 12 / 120, 3)
    assert one["all_trials"]["steady_mb_per_s_per_session"] == 2.0  # 12 MB every 10 strides of 0.6 s
    never = summarize_setup(Setup("1-node-no-replication", 1, NO_REPLICATION, "none"),
                            [trial(1, True), trial(2, True), trial(4, False)], 30.0, 90.0, {"node1": "UP"})
    two = summarize_setup(Setup("2-nodes-K10", 2, 10, "two"), [trial(n, n <= 6, nodes=2, replicas=2 * n)
                          for n in (1, 2, 4, 8, 6, 7)], 30.0, 150.0, {"node1": "UP", "node2": "UP"})
    assert two["capacity_streams"] == 6
    assert at_capacity(summarize_setup(Setup("x", 1, 1, "x"), [trial(1, False)], 0, 0, {}))["streams"] == 1
    assert common_load([one, never, two]) == 2  # the one-node setups only

    result = {
        "name": "cluster-test", "date": "today", "commit": "abc", "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 1},
        "versions": {"python": "3"}, "note": "random weights", "wall_s": 600.0,
        "config": {"model_dir": "/m/large-random-seed0", "clip_seconds": 12.0, "distinct_clips": 12, "max_streams": 12,
                   "latency_limit_ms": 600.0, "redis_version": "7", "haproxy_version": "2.6"},
        "setups": [one, two, never],
    }
    md = markdown(result)
    assert "Two nodes carry **2.00×** the streams of one" in md and "those three 19.0 %" in md
    assert "| `1-node-no-replication` | 1 | never | 2 |" in md  # the same-load table, N = 2
    assert "| 6 | 12.0 | 2.0 | 2.0 |" in md  # replicas, MB per replica, MB/s per session in the trial and in a long one
    assert "| `2-nodes-K10` | 2 | 10 | 6 |" in md and "90.0 + 90.0" in md
    assert md.index("1-node-no-replication") < md.index("1-node-K10")  # the table's order, not the run's
