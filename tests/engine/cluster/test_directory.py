"""The session directory on a real `redis-server` (engine/cluster/directory.py): one owner per session, enforced in
Redis itself; heartbeats; events appended in order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from benchmarks.cluster_rig import RedisServer
from engine.cluster.directory import Directory
from engine.cluster.records import RecordState, Replica, SessionMeta
from engine.events import Final, Partial
from engine.messages import PipelineOptions, StreamOptions
from engine.snapshot_segment import RawSnapshot

META = SessionMeta(StreamOptions(), 16000, PipelineOptions(), "rest", None, 16000, "model-a")


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url
    server.remove_log()


def test_only_the_owner_writes_and_one_node_wins_a_takeover(redis_url: str) -> None:
    async def run() -> None:
        a, b, c = (Directory(redis_url, "t1:", name, 0.5) for name in ("a", "b", "c"))
        await a.register("s1", META, Replica(0, None, b"", None, 0), 60)
        snap = RawSnapshot(19200, 2, b"state")
        assert await a.replicate("s1", Replica(20000, snap, b"\0\0", None, 1), [Partial(("x", "y"), "xy", 19200)],
                                 RecordState.LIVE, 60)
        assert not await b.replicate("s1", Replica(1, None, b"", None, 0), [], RecordState.LIVE, 60)  # not b's
        found = await b.find("s1")
        assert found is not None and found.node == "a" and found.state is RecordState.LIVE and found.meta == META
        assert found.replica is not None and found.replica.snapshot == snap and found.replica.samples_received == 20000
        assert await b.events("s1", None) == [Partial(("x", "y"), "xy", 19200)]
        # a is gone; b and c both saw it as the owner: the compare-and-set lets exactly one of them take it.
        won = await asyncio.gather(b.claim("s1", "a"), c.claim("s1", "a"))
        assert sorted(won) == [False, True]
        winner, loser = (b, c) if won[0] else (c, b)
        assert await winner.owner("s1") == winner.node
        assert not await a.replicate("s1", None, [Final((), "", "closed", 0)], RecordState.ENDED, 60)  # fenced off
        assert await winner.replicate("s1", None, [Final(("x", "y"), "xy", "closed", 20000)], RecordState.ENDED, 60)
        ended = await loser.find("s1")
        assert ended is not None and ended.state is RecordState.ENDED and len(await loser.events("s1", None)) == 2
        assert ended.replica is None and not await loser.redis.hexists("t1:session:s1", "replica")  # events only
        await winner.forget("s1")
        assert await loser.find("s1") is None
        for d in (a, b, c):
            await d.close()

    asyncio.run(run())


def test_a_heartbeat_lapses_unless_renewed(redis_url: str) -> None:
    async def run() -> None:
        a, b = Directory(redis_url, "t2:", "a", 0.3), Directory(redis_url, "t2:", "b", 0.3)
        await a.heartbeat("a")  # the first one creates it
        assert await a.heartbeat("a")  # renewed in time
        assert await b.node_alive("a")
        time.sleep(0.5)
        assert not await b.node_alive("a")
        assert not await a.heartbeat("a")  # it had lapsed: the node is told, and is back
        assert await b.node_alive("a")
        await a.leave()
        assert not await b.node_alive("a")
        await a.close()
        await b.close()

    asyncio.run(run())


def test_an_unreachable_directory_stops_the_node_from_starting() -> None:
    """Reported as a boot failure (`parastream serve` says "cannot start" and exits 2), the password hidden."""
    from types import SimpleNamespace

    from benchmarks.common import free_port
    from engine.cluster.node import ClusterNode
    from engine.errors import EngineBootError
    from engine.settings import Settings

    settings = Settings(cluster_redis=f"redis://:secret@127.0.0.1:{free_port()}/0", cluster_node="n")
    node = ClusterNode(SimpleNamespace(settings=settings, sessions={}))  # type: ignore[arg-type]
    with pytest.raises(EngineBootError, match="unreachable") as caught:
        asyncio.run(node.start())
    assert "secret" not in str(caught.value) and "//***@127.0.0.1" in str(caught.value)
