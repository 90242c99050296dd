"""A node taking sessions over (engine/cluster/node.py), in process, on a real redis-server and real shared memory:
what it rebuilds from a record, and when it must not take a session."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.cluster_rig import RedisServer
from engine.cluster.directory import Directory
from engine.cluster.node import ClusterNode
from engine.cluster.records import RecordState, Replica, SessionMeta
from engine.errors import SessionElsewhere, SessionNotFound
from engine.events import Final, Partial
from engine.messages import PipelineOptions, StreamOptions
from engine.ring import RingReader
from engine.sessions import Session, SessionState
from engine.settings import Settings
from engine.snapshot_segment import RawSnapshot, read_latest

META = SessionMeta(StreamOptions(), 16000, PipelineOptions(), "rest", "key-1", 32000, "model-a")


class Host:
    """The engine as a node sees it: a worker always ready (take_over only records the session)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.settings = Settings(_env_file=None, model="model-a", cluster_redis=url, cluster_node="b",
                                 cluster_prefix=prefix, cluster_node_ttl_s=0.3)
        self.sessions: dict[str, Session] = {}
        self.taken: list[Session] = []

    def live(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.state.holds_resources]

    def take_over(self, session: Session) -> bool:
        self.sessions[session.id] = session
        self.taken.append(session)
        return True

    def release(self, session: Session) -> None:
        self.sessions.pop(session.id, None)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url
    server.remove_log()


def test_a_dead_nodes_session_is_rebuilt_where_its_replica_left_it(redis_url: str) -> None:
    tail = np.arange(4000, dtype="<i2").tobytes()
    snapshot = RawSnapshot(19200, 2, b"the worker's pickle")
    events = [Partial(("a",), "a", 9600), Partial(("b",), "b", 19200)]

    async def run() -> None:
        a = Directory(redis_url, "n1:", "a", 0.3)
        await a.heartbeat("a")
        await a.register("s1", META, Replica(0, None, b"", None, 0), 60)
        await a.replicate("s1", Replica(23200, snapshot, tail, None, 2), events, RecordState.LIVE, 60)
        host = Host(redis_url, "n1:")
        node = ClusterNode(host)  # type: ignore[arg-type]
        with pytest.raises(SessionElsewhere):  # a's heartbeat still lives: not ours to take
            await node.adopt("s1")
        with pytest.raises(SessionNotFound):
            await node.adopt("unknown")
        await asyncio.sleep(0.4)  # a's heartbeat lapses
        await asyncio.gather(node.adopt("s1"), node.adopt("s1"))  # two requests at once: one take-over
        assert len(host.taken) == 1
        session = host.sessions["s1"]
        assert await a.owner("s1") == "b" and session.owner == "key-1"
        assert (session.samples_received, session.samples_durable, session.processed_pos) == (23200, 23200, 19200)
        assert session.tokens == ["a", "b"] and session.last_event_id == 2 and session.state is SessionState.OPEN
        assert session.ring is not None
        reader = RingReader.attach(session.ring.name)  # what the worker that restores it will find
        assert (reader.read_pos, reader.write_pos) == (19200, 23200) and reader.read(19200, 4000).tobytes() == tail
        assert read_latest(session.ring.name, reader.snapshot_gen) == snapshot
        reader.close()
        session.ring.unlink()
        await a.close()
        await node.directory.close()

    asyncio.run(run())


def test_an_ended_session_is_read_only_and_another_models_is_not_taken(redis_url: str) -> None:
    async def run() -> None:
        a = Directory(redis_url, "n2:", "a", 0.3)
        await a.register("s2", META, Replica(0, None, b"", None, 0), 60)
        final = Final(("a",), "a", "closed", 16000)
        await a.replicate("s2", None, [Partial(("a",), "a", 9600), final], RecordState.ENDED, 60)
        other = SessionMeta(StreamOptions(), 16000, PipelineOptions(), "rest", None, 32000, "model-b")
        await a.register("s3", other, Replica(0, None, b"", None, 0), 60)
        host = Host(redis_url, "n2:")
        node = ClusterNode(host)  # type: ignore[arg-type]
        await node.adopt("s2")
        session = host.sessions["s2"]
        assert session.state is SessionState.FINISHED and session.ring is None and not host.taken
        assert [e.payload for e in session.events] == [Partial(("a",), "a", 9600), final]
        assert await a.owner("s2") == "a"  # reading it claims nothing
        with pytest.raises(SessionElsewhere, match="model-b"):
            await node.adopt("s3")
        await a.close()
        await node.directory.close()

    asyncio.run(run())
