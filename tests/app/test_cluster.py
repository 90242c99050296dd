"""Two nodes behind HAProxy with Redis (benchmarks/cluster_rig.py, deploy/haproxy.cfg): a node SIGKILLed mid-stream
or drained changes no word of any transcript, and no event id repeats or goes missing (docs/cluster.md)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

from app.sdk import AsyncClient
from app.sdk.events import Event
from benchmarks.cluster_rig import Cluster
from engine.ring import sweep_segments
from tests.audio import synth_speechlike
from tests.harness import CLEAN_EXIT, segments_of, wait_for
from tests.helpers import metric
from tests.reference_cache import reference_tokens

SESSIONS = 8


def clips(seed: int) -> list[np.ndarray]:
    return [synth_speechlike(4.5 + (i % 4) * 0.7, seed=seed + i) for i in range(SESSIONS)]


def assert_exact(events: Sequence[Event], expected: list[str]) -> None:
    """The final is FunASR's own loop's transcript; ids 1..n, none twice, none missing; partials add up to it."""
    assert events and events[-1].type == "final", events[-1:]
    assert list(events[-1].tokens) == expected  # type: ignore[union-attr]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert [t for e in events if e.type == "partial" for t in e.tokens] == expected  # type: ignore[union-attr]


async def node_of(cluster: Cluster, http: httpx.AsyncClient, session_id: str) -> int:
    return cluster.node_of(await http.get(f"{cluster.url}/v1/sessions/{session_id}"))


async def run_sessions(
    cluster: Cluster, audio: list[np.ndarray], during: object
) -> tuple[list[list[Event]], list[int], list[str]]:
    """Stream every clip into its own session through HAProxy at twice real time, running `during(placed)` (placed:
    the node of each session) meanwhile; every session's events, its first node, and its id."""
    async with AsyncClient(cluster.url) as client, httpx.AsyncClient(timeout=10) as http:
        sessions = [await client.create_session() for _ in audio]
        placed = [await node_of(cluster, http, s.id) for s in sessions]

        async def one(session: object, clip: np.ndarray) -> list[Event]:
            return [event async for event in client.stream(session, clip, realtime=True, speed=2.0)]  # type: ignore[arg-type]

        streams = [asyncio.create_task(one(s, c)) for s, c in zip(sessions, audio)]
        await during(placed)  # type: ignore[operator]
        return await asyncio.wait_for(asyncio.gather(*streams), 180), placed, [s.id for s in sessions]


def test_a_node_sigkilled_mid_stream_changes_no_word(model_dir: Path) -> None:
    """8 REST sessions over two nodes; the node holding most of them is SIGKILLed (with its workers) mid-stream.
    Every session finishes through the SDK, token for token FunASR's, with gap-free, duplicate-free ids; a session
    created afterwards lands on the live node."""
    audio = clips(700)
    with Cluster(model_dir, nodes=2) as cluster:
        killed: list[int] = []

        async def kill(placed: list[int]) -> None:
            await asyncio.sleep(1.2)  # ~2.4 s of audio in: several replicas written, more audio after the last
            victim = max((0, 1), key=placed.count)
            os.killpg(cluster.nodes[victim].pid, signal.SIGKILL)
            killed.append(victim)

        results, placed, session_ids = asyncio.run(run_sessions(cluster, audio, kill))
        victim, survivor = killed[0], 1 - killed[0]
        assert placed.count(victim) >= SESSIONS // 2 and placed.count(survivor) >= 1, placed  # both served, at first
        for clip, events in zip(audio, results):
            assert_exact(events, reference_tokens(model_dir, clip))
        log = cluster.nodes[survivor].log(tail=10_000_000)
        assert log.count("taken over from node") == placed.count(victim)
        assert '/audio?offset=' in log and '" 409 Conflict' in log  # audio after the last replica was sent again
        survivor_url = cluster.nodes[survivor].base_url
        assert metric(survivor_url, "parastream_cluster_takeovers_total") == placed.count(victim)
        assert metric(survivor_url, "parastream_cluster_replicas_total") >= 1
        assert metric(survivor_url, "parastream_cluster_replica_bytes_total") > 0
        assert metric(survivor_url, "parastream_cluster_replica_capture_seconds_count") >= 1

        # A new session lands on the live node (HAProxy marked the dead one down).
        wait_for(lambda: cluster.haproxy.servers()[f"node{victim + 1}"]["status"].startswith("DOWN"), 10, "node down")
        created = httpx.post(f"{cluster.url}/v1/sessions", json={}, timeout=10)
        assert created.status_code == 201 and cluster.node_of(created) == survivor
        sweep_segments(cluster.nodes[victim].pid)  # a SIGKILLed node cannot clean up (its next start would)

        # The dead node comes back: the taken-over sessions still go to the node that took them over (the stick
        # table learnt it from that node's answers), and new sessions go to both again.
        cluster.restart(victim)
        cluster.wait_routed()
        moved = [sid for sid, node in zip(session_ids, placed) if node == victim]
        for sid in moved:
            assert cluster.node_of(httpx.get(f"{cluster.url}/v1/sessions/{sid}", timeout=10)) == survivor
    cluster.remove_logs()


def test_a_drain_moves_or_finishes_every_session(model_dir: Path) -> None:
    """POST /v1/admin/drain on the node holding most sessions, with a short PARASTREAM_CLUSTER_DRAIN_S: its open
    sessions are handed off to the other node, which carries them on with nothing lost; the drained node exits
    cleanly and HAProxy stops sending it anything."""
    audio = clips(800)
    with Cluster(model_dir, nodes=2, cluster_drain_s=0.5, admin_keys="", api_keys="") as cluster:
        drained: list[int] = []

        async def drain(placed: list[int]) -> None:
            await asyncio.sleep(1.2)
            node = max((0, 1), key=placed.count)
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.post(f"{cluster.nodes[node].base_url}/v1/admin/drain")
            assert answer.status_code == 202 and answer.json()["node"] == f"node{node + 1}", answer.text
            drained.append(node)

        results, placed, _ = asyncio.run(run_sessions(cluster, audio, drain))
        node = cluster.nodes[drained[0]]
        for clip, events in zip(audio, results):
            assert_exact(events, reference_tokens(model_dir, clip))
        moved = cluster.nodes[1 - drained[0]].log(tail=10_000_000).count("taken over from node")
        assert metric(cluster.nodes[1 - drained[0]].base_url, "parastream_cluster_takeovers_total") == moved
        assert 1 <= moved <= placed.count(drained[0]), (moved, placed)  # the drain ran while they were open
        assert node.proc is not None and node.proc.wait(30) in CLEAN_EXIT
        assert f"drain: {moved} of {moved} open sessions handed off" in node.log(tail=10_000_000)
        assert segments_of(node.pid) == []
        wait_for(lambda: cluster.haproxy.servers()[f"node{drained[0] + 1}"]["status"].startswith("DOWN"), 10, "down")
    cluster.remove_logs()
