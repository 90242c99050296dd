"""This node's part in a cluster: replicate its sessions to Redis, take over sessions of a lost node, drain.

HAProxy routes (deploy/haproxy.cfg): each session's requests go to the node that created it, through a stick table
keyed by the session id; new sessions go by the weights that nodes report through its agent-check
(app/protocols/haproxy_agent.py). This module is what makes a session outlive its node:

1. A REST session in online mode is registered in the directory before its create answer goes out, so any node
   can find it from its first request on.
2. Every PARASTREAM_CLUSTER_REPLICATE_STRIDES strides its replica is written (engine/cluster/records.py): the
   worker's last snapshot, read raw from shared memory, the audio after it, and the events since the last replica.
   Only then does the append answer's `samples_durable` move up to the replica's `samples_received`: a client keeps
   the audio after that (the SDK does) and can always replay it.
3. A request for a session this node does not hold looks it up in the directory. If its node's heartbeat is gone
   (or the node released it in a drain), this node claims it (a compare-and-set), rebuilds the ring and the
   snapshot segment from the replica, and a worker carries it on exactly as after a worker crash
   (docs/recovery.md). The client's next append gets `409 offset_gap` with the replica's `samples_received`; its
   event stream resumes with `Last-Event-ID`; the strides replayed from the snapshot give the same events with the
   same ids.
4. A drain stops new sessions, lets open ones finish for PARASTREAM_CLUSTER_DRAIN_S, then hands the rest off: each
   is written once more, whole, marked released, and dropped here; the node then reports `down`.

Online mode only: in 2pass a sentence comes from a second-pass thread, so where it falls among the partials (and
so every later event id) depends on timing, and a replay could renumber events a client already has. WebSocket
sessions live and die with their connection, which cannot move (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from redis.exceptions import RedisError

from engine import logs, metrics
from engine.cluster.directory import Directory, Found
from engine.cluster.records import RecordState, Replica, SessionMeta
from engine.errors import EngineBootError, NotReady, SessionElsewhere, SessionNotFound
from engine.events import Failure, Partial, Payload
from engine.limits import TokenBucket
from engine.messages import Mode
from engine.ring import RingWriter, new_segment_name
from engine.sessions import Session, SessionState
from engine.settings import Settings
from engine.snapshot_segment import install, read_latest

log = logging.getLogger(__name__)

HANDOFF_WAIT_S = 5.0  # a handed-off session's worker finishing the strides already in its ring, at most
RECORD_SLACK_S = 3600.0  # a live record outlives PARASTREAM_MAX_SESSION_S by this much: Redis never keeps it forever


class NodeState(str, Enum):
    UP = "up"  # takes new sessions
    DRAINING = "draining"  # takes none; open ones finish or move
    DOWN = "down"  # handed everything off; about to exit


@dataclass
class Track:
    """What this node remembers about replicating one session."""

    strides: int = 0  # since the last replica
    events: int = 0  # events already in Redis
    busy: bool = False  # a write is under way


class Host(Protocol):
    """What a node needs of its engine (engine.service.Engine), which calls it back on its sessions' news."""

    settings: Settings
    sessions: dict[str, Session]

    def live(self) -> list[Session]: ...

    def take_over(self, session: Session) -> bool: ...

    def release(self, session: Session) -> None: ...


def replicable(session: Session) -> bool:
    return session.protocol == "rest" and session.pipeline.mode is Mode.ONLINE


class ClusterNode:
    def __init__(self, engine: Host) -> None:
        s = engine.settings
        self.engine = engine
        self.name = s.cluster_node_name
        self.every = s.cluster_replicate_strides
        self.directory = Directory(s.cluster_redis, s.cluster_prefix, self.name, s.cluster_node_ttl_s)
        self.state = NodeState.UP
        self.tracks: dict[str, Track] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def live_ttl_s(self) -> float:
        return self.engine.settings.max_session_s + RECORD_SLACK_S

    async def start(self) -> None:
        try:  # fails fast, before the model loads and the port opens, if Redis is unreachable
            await self.directory.heartbeat(self.name)
        except (RedisError, OSError) as exc:
            await self.directory.close()
            shown = self.engine.settings.cluster_redis_display
            raise EngineBootError(f"the cluster directory PARASTREAM_CLUSTER_REDIS={shown} is unreachable: {exc}") from exc
        self._heartbeat = asyncio.create_task(self._heartbeat_loop())
        log.info("cluster node %s: directory %s", self.name, self.engine.settings.cluster_redis_display)

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 2.0)
        with contextlib.suppress(RedisError, OSError):
            await self.directory.leave()
        await self.directory.close()

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[object] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- this node's sessions ------------------------------------------------------------------------------

    async def register(self, session: Session) -> None:
        """Record a new session before its create answer: from then on any node can find it."""
        if not replicable(session) or session.ring is None:
            return
        meta = SessionMeta(
            session.options, session.sample_rate, session.pipeline, session.protocol, session.owner,
            session.ring.capacity, self.engine.settings.model,
        )
        await self.directory.register(
            session.id, meta, Replica(0, None, b"", copy.deepcopy(session.resampler), 0), self.live_ttl_s
        )
        self.tracks[session.id] = Track()
        session.samples_durable = 0

    def on_stride(self, session: Session) -> None:
        track = self.tracks.get(session.id)
        if track is None or session.state is not SessionState.OPEN:
            return
        track.strides += 1  # counted during a write too: they are not in the replica being written
        if track.strides >= self.every and not track.busy:
            self._spawn(self.replicate(session))

    def capture(self, session: Session) -> Replica | None:
        """The session's state now, if the worker's last snapshot is the stride this process heard last (else
        None: try again after the next stride). Synchronous, so nothing changes while it is read."""
        ring = session.ring
        if ring is None:
            return None
        snapshot = read_latest(ring.name, ring.snapshot_gen)
        start = snapshot.processed_pos if snapshot is not None else 0
        if start != session.processed_pos or (snapshot is not None and snapshot.token_count != len(session.tokens)):
            return None
        tail = ring.copy(start, ring.write_pos)
        return Replica(session.samples_received, snapshot, tail, copy.deepcopy(session.resampler), session.last_event_id)

    async def replicate(self, session: Session, state: RecordState = RecordState.LIVE) -> bool:
        track = self.tracks.get(session.id)
        if track is None or track.busy:
            return False
        started = time.perf_counter()
        replica = self.capture(session)
        if replica is None:
            return False
        captured = time.perf_counter()
        metrics.CLUSTER_REPLICA_CAPTURE.observe(captured - started)
        if track.events < session.dropped:  # pragma: no cover - a replica every few strides never falls this far
            log.error("session %s: events were trimmed before they were replicated; no longer replicated", session.id)
            self.tracks.pop(session.id, None)
            return False
        events = [event.payload for event in session.events[track.events - session.dropped :]]
        track.busy, counted, track.strides = True, track.strides, 0
        try:
            written = await self.directory.replicate(session.id, replica, events, state, self.live_ttl_s)
        except (RedisError, OSError) as exc:
            log.warning("session %s: replication failed: %s", session.id, exc, extra=logs.fields(session))
            track.strides += counted  # due again at the next stride
            return False
        finally:
            track.busy = False
        if not written:
            self._lost(session)
            return False
        track.events = replica.events
        session.samples_durable = max(session.samples_durable or 0, replica.samples_received)
        metrics.CLUSTER_REPLICA_WRITE.observe(time.perf_counter() - captured)
        metrics.CLUSTER_REPLICAS.inc()
        metrics.CLUSTER_REPLICA_BYTES.inc(len(replica.tail) + (len(replica.snapshot.blob) if replica.snapshot else 0))
        return True

    def on_end(self, session: Session) -> None:
        """Final, error or abort: what later readers may still ask for (an aborted session is forgotten)."""
        track = self.tracks.pop(session.id, None)
        if track is None:
            return
        if session.state is SessionState.ABORTED:
            self._spawn(self._quietly(self.directory.forget(session.id)))
        else:
            self._spawn(self._quietly(self._ended(session, track)))

    async def _ended(self, session: Session, track: Track) -> None:
        # Runs after the ending event is in the log (the engine emits it right after ending the session).
        events = [event.payload for event in session.events[max(0, track.events - session.dropped) :]]
        ttl = self.engine.settings.finished_session_ttl_s
        await self.directory.replicate(session.id, None, events, RecordState.ENDED, ttl)

    @staticmethod
    async def _quietly(coro: object) -> None:
        try:
            await coro  # type: ignore[misc]
        except (RedisError, OSError) as exc:
            log.warning("cluster directory: %s", exc)

    def _lost(self, session: Session) -> None:
        """Another node owns the session now (this one's heartbeat lapsed): let it go without a word to anyone."""
        log.warning("session %s is owned by another node now; dropped here", session.id, extra=logs.fields(session))
        self.tracks.pop(session.id, None)
        self.engine.release(session)

    # --- sessions of other nodes ---------------------------------------------------------------------------

    async def adopt(self, session_id: str) -> None:
        """Make a session this node does not hold local, from the directory; one attempt at a time per session."""
        lock = self._locks.setdefault(session_id, asyncio.Lock())
        try:
            async with lock:
                if session_id not in self.engine.sessions:
                    await self._adopt(session_id)
        finally:
            if not lock.locked():
                self._locks.pop(session_id, None)

    async def _adopt(self, session_id: str) -> None:
        try:
            found = await self.directory.find(session_id)
        except (RedisError, OSError) as exc:
            raise NotReady(f"the session directory is unreachable: {exc}", retry_after_s=1) from exc
        if found is None:
            raise SessionNotFound(f"no session {session_id}")
        if found.meta.model != self.engine.settings.model:
            raise SessionElsewhere(f"session {session_id} belongs to nodes serving {found.meta.model}")
        if found.state is RecordState.ENDED:
            events = await self.directory.events(session_id, None)
            if not events:  # pragma: no cover - an ended record always has its ending event
                raise SessionNotFound(f"no session {session_id}")
            self._readonly(session_id, found, events)
            return
        if self.state is not NodeState.UP:
            raise SessionElsewhere(f"session {session_id} is moving to another node; retry", retry_after_s=1)
        if found.node != self.name and found.state is RecordState.LIVE and await self.directory.node_alive(found.node):
            raise SessionElsewhere(
                f"session {session_id} is served by node {found.node}, which is alive; retry (the load balancer "
                "sends it there)", retry_after_s=1,
            )
        if not await self.directory.claim(session_id, found.node):
            raise SessionElsewhere(f"session {session_id} was just taken over by another node; retry", retry_after_s=1)
        replica = found.replica
        assert replica is not None
        events = await self.directory.events(session_id, replica.events)
        self._carry_on(session_id, found, replica, events)

    def _readonly(self, session_id: str, found: Found, events: list[Payload]) -> None:
        """An ended session: its events only, for a reader that lost its node before the last one."""
        session = self._session(session_id, found, None)
        for payload in events:
            session.emit(payload)
        session.state = SessionState.FAILED if isinstance(events[-1], Failure) else SessionState.FINISHED
        session.ended_at = time.monotonic()
        self.engine.sessions[session_id] = session

    def _carry_on(self, session_id: str, found: Found, replica: Replica, events: list[Payload]) -> None:
        name = new_segment_name()
        if replica.snapshot is not None:
            install(name, 1, replica.snapshot)
        ring = RingWriter.create(
            found.meta.ring_capacity, name, start=replica.processed_pos, snapshot_gen=1 if replica.snapshot else 0
        )
        ring.write(replica.tail)
        session = self._session(session_id, found, ring)
        session.resampler = replica.resampler
        session.samples_received = session.samples_durable = replica.samples_received
        session.processed_pos = replica.processed_pos
        for payload in events:
            if isinstance(payload, Partial):
                session.add_stride(payload.tokens, payload.text)
            session.emit(payload)
        if not self.engine.take_over(session):
            ring.unlink()
            raise NotReady("no worker is ready", retry_after_s=2)
        self.tracks[session_id] = Track(events=replica.events)
        metrics.CLUSTER_TAKEOVERS.inc()
        log.warning(
            "session %s taken over from node %s at sample %d (%d events)", session_id, found.node,
            replica.samples_received, replica.events, extra=logs.fields(session),
        )

    def _session(self, session_id: str, found: Found, ring: RingWriter | None) -> Session:
        meta, s = found.meta, self.engine.settings
        return Session(
            session_id, meta.options, meta.sample_rate, ring, pipeline=meta.pipeline, protocol=meta.protocol,
            owner=meta.owner, history=s.event_history, appends=TokenBucket(s.max_appends_per_s),
        )

    # --- drain ---------------------------------------------------------------------------------------------

    async def drain(self, finish_s: float) -> None:
        """Take no new sessions; let open ones finish for `finish_s`; hand the replicable rest off, then report
        `down`. What is left (WebSocket sessions) the engine's own drain ends."""
        self.state = NodeState.DRAINING
        deadline = time.monotonic() + finish_s
        while time.monotonic() < deadline and any(s.id in self.tracks for s in self.engine.live()):
            await asyncio.sleep(0.1)
        moving = [s for s in self.engine.live() if s.id in self.tracks and s.state is SessionState.OPEN]
        moved = sum(await asyncio.gather(*(self._hand_off(s) for s in moving)))
        if moving:
            log.info("drain: %d of %d open sessions handed off", moved, len(moving))
        self.state = NodeState.DOWN

    async def _hand_off(self, session: Session) -> bool:
        session.handing_off = True  # appends and closes wait (503) from now on
        deadline = time.monotonic() + HANDOFF_WAIT_S
        while time.monotonic() < deadline:
            track = self.tracks.get(session.id)
            if track is None or session.state is not SessionState.OPEN:
                return False
            if not track.busy and await self.replicate(session, RecordState.RELEASED):
                self.tracks.pop(session.id, None)
                self.engine.release(session)
                metrics.CLUSTER_HANDOFFS.inc()
                return True
            await asyncio.sleep(0.05)
        log.warning("session %s could not be handed off in %g s", session.id, HANDOFF_WAIT_S)
        session.handing_off = False
        return False

    async def _heartbeat_loop(self) -> None:
        period = self.engine.settings.cluster_node_ttl_s / 3
        while True:
            await asyncio.sleep(period)
            try:
                if not await self.directory.heartbeat(self.name):
                    log.error("cluster node %s: heartbeat had lapsed; checking which sessions are still ours", self.name)
                    for session_id in list(self.tracks):
                        if await self.directory.owner(session_id) != self.name:
                            session = self.engine.sessions.get(session_id)
                            if session is not None:
                                self._lost(session)
            except (RedisError, OSError) as exc:
                log.warning("cluster heartbeat failed: %s", exc)
