"""The engine as the HTTP layer uses it: sessions in, events out.

`Engine` is a facade over three owners: the session registry and lifecycle (here), where sessions live
(`engine.placement`), and the worker processes (`engine.supervisor`, injected). It runs on the API process's event
loop and imports neither torch nor FastAPI. Routing is sticky: a session is placed on the least-loaded ready worker
when it is created, and every message about it goes to that worker, so its cache lives in that process; it moves
only whole, after a crash or between two strides (engine/placement.py says how).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import Histogram

from engine import logs, metrics
from engine.audio import SUPPORTED_SAMPLE_RATES, check_pcm, resampler_for
from engine.errors import (
    BufferFull,
    EngineError,
    InvalidOptions,
    NotReady,
    OffsetGap,
    RateLimited,
    ServiceFull,
    SessionElsewhere,
    SessionNotFound,
    SessionNotOpen,
    TooManySessions,
)
from engine.events import ErrorCode, Failure, Final, Partial, Sentence, SessionView, WorkerView
from engine.limits import TokenBucket
from engine.messages import (
    AbortSession,
    AudioReady,
    CloseSession,
    FromWorker,
    Mode,
    OpenSession,
    PipelineOptions,
    SentenceDone,
    SessionDetached,
    SessionFailed,
    StreamOptions,
    StrideDone,
)
from engine.placement import Placement
from engine.ring import RingFull, RingWriter, sweep_segments
from engine.sessions import Session, SessionState
from engine.settings import Settings
from engine.supervisor import Supervisor
from engine.units import SAMPLE_RATE

if TYPE_CHECKING:
    from engine.cluster.node import ClusterNode

log = logging.getLogger(__name__)


def validate_options(chunk_size: list[int] | tuple[int, ...], enc_look_back: int, dec_look_back: int) -> StreamOptions:
    """Checks what FunASR would otherwise fail on deep inside a worker."""
    if len(chunk_size) != 3 or any(not isinstance(v, int) for v in chunk_size):
        raise InvalidOptions("chunk_size must be three integers, e.g. [0, 10, 5]")
    left, stride, right = chunk_size
    if left < 0 or right < 0 or not 1 <= stride <= 32 or left + right > 32:
        raise InvalidOptions("chunk_size must be [left >= 0, 1 <= stride <= 32, right >= 0] with left + right <= 32")
    if not 0 <= enc_look_back <= 16 or not 0 <= dec_look_back <= 16:
        raise InvalidOptions("encoder_chunk_look_back and decoder_chunk_look_back must be within 0..16")
    return StreamOptions((left, stride, right), enc_look_back, dec_look_back)


class Engine:
    def __init__(self, settings: Settings, supervisor: Supervisor | None = None) -> None:
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self.supervisor = supervisor if supervisor is not None else Supervisor(settings)
        self.placement = Placement(self.supervisor, settings.max_session_restores, self._fail)
        self.accepting = False
        self.started = False
        self.stopped = False
        self.draining = False
        self._reaper: asyncio.Task[None] | None = None
        self._balancer: asyncio.Task[None] | None = None
        self.cluster: ClusterNode | None = None  # with PARASTREAM_CLUSTER_REDIS (engine/cluster/node.py)
        self.moved: dict[str, tuple[float, str | None]] = {}  # released to another node: when, and whose

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True
        stale = sweep_segments(stale_only=True)
        if stale:
            log.warning("removed %d shared-memory segments left by a previous instance", len(stale))
        if self.settings.cluster_redis:
            from engine.cluster.node import ClusterNode  # the redis client is imported only where it is used

            self.cluster = ClusterNode(self)
            await self.cluster.start()
        await self.supervisor.start(self)
        self._reaper = asyncio.create_task(self._reap_loop())
        if self.settings.rebalance_interval_s > 0:
            self._balancer = asyncio.create_task(self._balance_loop())
        self.accepting = True
        metrics.watch(self)

    async def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline:
            if self.supervisor.halt_reason:
                return False
            await asyncio.sleep(0.05)
        return self.ready

    async def drain(self, timeout: float) -> None:
        """Finish what was received, then end every session (SIGTERM).

        New sessions and new audio are refused from now on. Each open session's full strides already in its ring
        are transcribed; closed sessions get their final. What is still open when that is done, or when `timeout`
        runs out, gets an `error` event saying the server is shutting down. In a cluster, first the node's own
        drain (engine/cluster/node.py): open sessions get PARASTREAM_CLUSTER_DRAIN_S to finish, then move to
        another node."""
        self.accepting = False
        if self.cluster is not None:
            await self.cluster.drain(self.settings.cluster_drain_s)
        self.draining = True
        targets = {s.id: s.ring_pos // s.options.stride_samples * s.options.stride_samples for s in self.live()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [
                s for s in self.live()
                if s.state is SessionState.CLOSING or s.processed_pos < targets.get(s.id, 0)
            ]
            if not busy:
                break
            await asyncio.sleep(0.05)
        for session in self.live():
            done = session.samples_processed
            self._fail(session, ErrorCode.SHUTDOWN, f"the server is shutting down; audio up to sample {done} was transcribed")

    def live(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.state.holds_resources]

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.accepting = False
        if self._reaper:
            self._reaper.cancel()
        if self._balancer:
            self._balancer.cancel()
        for session in list(self.sessions.values()):
            if session.state.holds_resources:
                self._fail(session, ErrorCode.SHUTDOWN, "the server is shutting down")
        await self.supervisor.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        metrics.unwatch(self)
        sweep_segments()  # anything this process still owns

    @property
    def ready(self) -> bool:
        return self.accepting and self.supervisor.ready and not self.supervisor.halt_reason

    def open_sessions(self) -> int:
        return sum(1 for s in self.sessions.values() if s.state.holds_resources)

    # --- the API ------------------------------------------------------------------------------------------

    def default_mode(self) -> Mode:
        """2pass where the sentence models are configured (FunASR's servers default to it), online otherwise."""
        return Mode.TWO_PASS if self.settings.sentences_enabled else Mode.ONLINE

    def create_session(
        self,
        sample_rate: int,
        options: StreamOptions,
        pipeline: PipelineOptions | None = None,
        *,
        protocol: str = "rest",
        owner: str | None = None,
    ) -> Session:
        pipeline = pipeline if pipeline is not None else PipelineOptions(self.default_mode())
        if sample_rate not in SUPPORTED_SAMPLE_RATES:
            raise InvalidOptions(f"sample_rate must be one of {list(SUPPORTED_SAMPLE_RATES)}")
        if pipeline.mode.sentences and not self.settings.sentences_enabled:
            raise InvalidOptions(
                f"mode {pipeline.mode.value} needs sentence models: this service has no PARASTREAM_VAD_MODEL and "
                "PARASTREAM_OFFLINE_MODEL configured, so only mode online is served"
            )
        if not self.accepting:
            metrics.reject("not_ready")
            raise NotReady("the server is not accepting sessions (starting or shutting down)", retry_after_s=5)
        if owner is not None:  # with API keys: each key's own limit first, so a key at its limit hears so (429)
            held = sum(1 for x in self.sessions.values() if x.owner == owner and x.state.holds_resources)
            if held >= self.settings.max_sessions_per_key:
                metrics.reject("too_many_sessions")
                raise TooManySessions(
                    f"this API key holds {held} open sessions (PARASTREAM_MAX_SESSIONS_PER_KEY is "
                    f"{self.settings.max_sessions_per_key}); close one, or retry later",
                    retry_after_s=5,
                    limit=self.settings.max_sessions_per_key,
                )
        if self.open_sessions() >= self.settings.max_sessions:
            metrics.reject("service_full")
            raise ServiceFull(
                f"{self.settings.max_sessions} sessions are open (PARASTREAM_MAX_SESSIONS)", retry_after_s=5
            )
        slot = self.placement.choose()
        if slot is None:
            metrics.reject("not_ready")
            raise NotReady(self.supervisor.halt_reason or "no worker is ready yet", retry_after_s=2)
        session_id = secrets.token_hex(16)  # 128 random bits
        s = self.settings
        ring = RingWriter.create(s.sentence_ring_capacity_samples if pipeline.mode.sentences else s.ring_capacity_samples)
        session = Session(
            session_id,
            options,
            sample_rate,
            ring,
            pipeline=pipeline,
            protocol=protocol,
            owner=owner,
            resampler=resampler_for(sample_rate),
            history=self.settings.event_history,
            appends=TokenBucket(self.settings.max_appends_per_s),
        )
        self.sessions[session_id] = session
        self.placement.assign(session_id, slot)
        self.supervisor.send(slot, OpenSession(session_id, ring.name, options, pipeline, protocol))
        metrics.SESSIONS_CREATED.inc()
        metrics.SESSIONS_OPEN.set(self.open_sessions())
        logs.bind(session_id, protocol)  # the rest of this request's (or connection's) lines are about it
        log.info(
            "session %s opened on worker %d: mode %s, %d Hz, chunk_size %s",
            session_id, slot, pipeline.mode.value, sample_rate, list(options.chunk_size), extra=logs.fields(session),
        )
        return session

    async def open_session(
        self, sample_rate: int, options: StreamOptions, pipeline: PipelineOptions | None = None, *, owner: str | None
    ) -> Session:
        """A REST session: `create_session`, and in a cluster its record in the directory before the answer, so
        that it outlives this node from its first request on."""
        session = self.create_session(sample_rate, options, pipeline, owner=owner)
        if self.cluster is not None:
            try:
                await self.cluster.register(session)
            except Exception as exc:
                self.abort(session.id)
                raise NotReady(f"the session directory is unreachable: {exc}", retry_after_s=2) from exc
        return session

    async def find(self, session_id: str, owner: str | None = None) -> Session:
        """`get`, and in a cluster a session this node does not hold is looked up in the directory and taken over
        when its node is gone (engine/cluster/node.py)."""
        if session_id not in self.sessions and self.cluster is not None:
            await self.cluster.adopt(session_id)
        return self.get(session_id, owner)

    def durable(self, session: Session) -> int:
        """Samples a client need not keep: all it sent, unless a cluster replicates the session less often."""
        return session.samples_received if session.samples_durable is None else session.samples_durable

    def take_over(self, session: Session) -> bool:
        """A session another node began, rebuilt from its replica: a worker carries it on from the snapshot."""
        self.sessions[session.id] = session
        if self.placement.take_over(session) is None:
            del self.sessions[session.id]
            return False
        metrics.SESSIONS_OPEN.set(self.open_sessions())
        return True

    def release(self, session: Session) -> None:
        """Let a session go to another node, quietly: its worker drops it, its subscribers resume elsewhere."""
        if session.state.holds_resources:
            self.supervisor.send(self.placement.route(session.id), AbortSession(session.id))
            self.placement.forget(session.id)
            if session.ring is not None:
                session.ring.unlink()
                session.ring = None
            session.ended_at = time.monotonic()
            session.move_away()
        self.sessions.pop(session.id, None)
        self.moved[session.id] = (time.monotonic(), session.owner)
        metrics.SESSIONS_OPEN.set(self.open_sessions())

    def get(self, session_id: str, owner: str | None = None) -> Session:
        """The session; with `owner`, only if it is that owner's: another's is not found, exactly as an unknown id.
        One released to another node (maybe while this request read its body) is elsewhere: retry, the load
        balancer will send the retry there."""
        session = self.sessions.get(session_id)
        if session is None and session_id in self.moved and owner in (None, self.moved[session_id][1]):
            raise SessionElsewhere(f"session {session_id} moved to another node; retry", retry_after_s=1)
        if session is None or (owner is not None and session.owner != owner):
            raise SessionNotFound(f"no session {session_id}")
        return session

    def view(self, session_id: str) -> SessionView:
        s = self.get(session_id)
        return SessionView(
            s.id, s.state.value, s.pipeline.mode.value, s.pipeline.hotwords, s.sample_rate, s.options.chunk_size,
            s.options.encoder_chunk_look_back, s.options.decoder_chunk_look_back, s.samples_received,
            s.samples_processed, self.placement.worker(s.id), s.text, len(s.transcript_tokens), len(s.sentences),
            s.last_event_id, s.close_reason or None, s.restores, s.migrations,
        )

    def workers(self) -> list[WorkerView]:
        return [
            WorkerView(
                w.index, w.pid, w.generation, w.device, w.cpus, w.ready, w.halted, w.restarts,
                self.placement.load(w.index), w.stats.cache_bytes if w.stats else None,
                w.stats.sessions if w.stats else None, w.stats.strides if w.stats else None,
            )
            for w in self.supervisor.slots
        ]

    def state_metrics(self) -> metrics.StateMetrics:
        """Open sessions by mode and protocol, and per worker slot: sessions, queue depth and strides behind (from the
        rings' write positions and what each worker reported processed), for /metrics at scrape time."""
        state = metrics.StateMetrics()
        per_worker = {slot.index: [0, 0, 0] for slot in self.supervisor.slots}
        for session in self.live():
            state.by_kind[(session.pipeline.mode.value, session.protocol)] += 1
            slot = self.placement.worker(session.id)
            if slot is None:
                continue  # between workers
            counts = per_worker.setdefault(slot, [0, 0, 0])
            counts[0] += 1
            if session.pipeline.mode.streams:
                behind = (session.ring_pos - session.processed_pos) // session.options.stride_samples
                counts[1] += behind > 0
                counts[2] += max(0, behind)
        state.per_worker = {str(slot): (n, depth, behind) for slot, (n, depth, behind) in per_worker.items()}
        return state

    @property
    def halt_reason(self) -> str | None:
        """Why the service cannot serve (a slot that keeps failing to boot, a dead model host), if it cannot."""
        return self.supervisor.halt_reason

    def admit_append(self, session: Session) -> None:
        """Counts one append of a REST client against PARASTREAM_MAX_APPENDS_PER_S; past it RateLimited (429), with
        the wait until the next one is taken. (WebSocket protocols gather audio into larger appends instead.)"""
        wait = session.appends.take() if session.appends is not None else 0.0
        if wait:
            metrics.reject("rate_limited")
            rate = self.settings.max_appends_per_s
            raise RateLimited(
                f"more than {rate:g} appends a second to session {session.id} (PARASTREAM_MAX_APPENDS_PER_S); "
                "send larger pieces, or retry after Retry-After",
                retry_after_s=wait,
                limit=rate,
            )

    def _not_open(self, session: Session) -> SessionNotOpen:
        if session.close_reason == "max_duration":
            limit = self.settings.max_session_s
            return SessionNotOpen(
                f"session {session.id} reached the longest a session may last, {limit:g} s "
                "(PARASTREAM_MAX_SESSION_S), and was closed; it takes no more audio: open a new session",
                close_reason=session.close_reason,
            )
        return SessionNotOpen(f"session {session.id} is {session.state.value}; it takes no more audio")

    def append(self, session_id: str, body: bytes, offset: int | None = None) -> Session:
        """Append PCM. With `offset` (the sample index of the body's first sample) a retry is safe: samples already
        received are acknowledged and skipped, and an offset past the end is refused with the expected one."""
        started = time.perf_counter()
        session = self.get(session_id)
        n = check_pcm(body)
        pcm = np.frombuffer(body, dtype="<i2")
        if offset is not None:
            if offset > session.samples_received:
                raise OffsetGap(
                    f"offset {offset} would leave a gap: {session.samples_received} samples received so far",
                    expected_offset=session.samples_received,
                )
            pcm = pcm[session.samples_received - offset :]
            if not len(pcm):
                return session  # all of it was received before: acknowledge, apply nothing
            n = len(pcm)
        if session.state is not SessionState.OPEN or session.ring is None:
            raise self._not_open(session)
        if self.draining:
            metrics.reject("not_ready")
            raise NotReady("the server is shutting down; it takes no more audio", retry_after_s=5)
        self._not_moving(session)
        needed = session.resampler.output_len(n) if session.resampler is not None else n
        if needed > session.ring.free:  # checked before the resampler's state moves
            behind_s = (session.ring.used + needed - session.ring.capacity) / SAMPLE_RATE
            raise BufferFull(
                f"session {session_id}'s buffer is full: {needed} samples do not fit in {session.ring.free} free; "
                "the worker is behind, retry later",
                retry_after_s=max(1, math.ceil(behind_s)),
            )
        if session.resampler is not None:
            pcm = session.resampler.process(pcm)
        try:
            session.ring.write(pcm.tobytes())
        except RingFull as exc:  # pragma: no cover - checked above
            raise BufferFull(str(exc), retry_after_s=1) from exc
        session.samples_received += n
        session.last_audio_at = time.monotonic()
        session.note_arrival(session.ring_pos, session.last_audio_at)
        self.supervisor.send(self.placement.route(session.id), AudioReady(session_id))
        metrics.AUDIO_SECONDS.inc(n / session.sample_rate)
        metrics.APPEND_LATENCY.observe(time.perf_counter() - started)
        return session

    @staticmethod
    def _not_moving(session: Session) -> None:
        """A session being handed off to another node takes no audio and no close: retry, it will be there."""
        if session.handing_off:
            raise SessionElsewhere(f"session {session.id} is moving to another node; retry", retry_after_s=1)

    def close(self, session_id: str, reason: str = "closed", offset: int | None = None) -> Session:
        """Close after the audio received. With `offset` (the client's end offset), a session that has not received
        all of it (another node carried it on from a replica) refuses with 409 `offset_gap` and `expected_offset`."""
        session = self.get(session_id)
        if offset is not None and offset > session.samples_received and session.state is SessionState.OPEN:
            raise OffsetGap(
                f"offset {offset}: {session.samples_received} samples received; send the rest, then close",
                expected_offset=session.samples_received,
            )
        self._not_moving(session)
        if session.state is SessionState.OPEN:
            session.state = SessionState.CLOSING
            session.close_reason = reason
            session.end_pos = session.ring_pos
            self.supervisor.send(self.placement.route(session.id), CloseSession(session_id, session.end_pos, reason))
        elif session.state is not SessionState.CLOSING and session.state is not SessionState.FINISHED:
            raise SessionNotOpen(f"session {session_id} is {session.state.value}")
        return session  # closing twice is harmless: the client may have lost the first answer

    def abort(self, session_id: str) -> None:
        session = self.get(session_id)
        if session.state.holds_resources:
            self.supervisor.send(self.placement.route(session.id), AbortSession(session_id))
            self._end(session, SessionState.ABORTED)
            session.emit(Failure(ErrorCode.ABORTED, "the session was deleted"))
        self.sessions.pop(session_id, None)

    # --- migration ----------------------------------------------------------------------------------------

    def migrate(self, session_id: str, target_slot: int, reason: str = "manual") -> bool:
        """Start moving a session to worker `target_slot`; False if that is not possible now (see start_migration)."""
        try:
            self.start_migration(session_id, target_slot, reason)
        except EngineError:
            return False
        return True

    def start_migration(self, session_id: str, target: int | None = None, reason: str = "manual") -> int:
        """Start moving an open session to worker `target` (default: the least-loaded other ready worker); returns
        the target's slot. Appends go into the ring as usual meanwhile (engine/placement.py tells how a move runs).

        Raises SessionNotFound, SessionNotOpen (not open: a closing session is about to end anyway), InvalidWorker
        (no such slot, or the one it is on), MigrationInFlight, NotReady (target not ready, shutting down)."""
        session = self.get(session_id)
        if session.state is not SessionState.OPEN or session.ring is None:
            raise SessionNotOpen(f"session {session_id} is {session.state.value}; only an open session is moved")
        if self.draining or not self.accepting:
            raise NotReady("the server is not accepting work (starting or shutting down)", retry_after_s=5)
        return self.placement.start_move(session, target, reason)

    async def _balance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rebalance_interval_s)
            try:
                self._rebalance()
            except Exception:  # the balancer must outlive any one bad step
                log.exception("load balancing step failed")

    def _rebalance(self) -> str | None:
        """Move at most one session from the busiest ready worker to the idlest (Placement.rebalance_choice says
        when and which); returns its id."""
        if not self.accepting or self.draining:
            return None
        choice = self.placement.rebalance_choice(self.sessions, self.settings.rebalance_spread)
        if choice is None:
            return None
        session, target = choice
        return session.id if self.migrate(session.id, target, reason="rebalance") else None

    # --- worker events (loop thread) ----------------------------------------------------------------------

    def on_worker_message(self, slot: int, msg: FromWorker) -> None:
        session = self.sessions.get(getattr(msg, "session_id", ""))
        if session is None or not session.state.holds_resources or self.placement.worker(session.id) != slot:
            # Aborted, failed, or from a worker that no longer serves it: late news is dropped. A moving session
            # stays its old worker's until SessionDetached (which follows all of that worker's StrideDones) and only
            # then becomes the new one's, so each worker's news is taken exactly while it holds the session.
            return
        match msg:
            case StrideDone():
                self._on_stride(session, msg)
            case SentenceDone():
                self._on_sentence(session, msg)
            case SessionFailed(message=message):
                self._fail(session, ErrorCode.INFERENCE_FAILED, message)
            case SessionDetached():
                self.placement.on_detached(session, msg)

    def _on_stride(self, session: Session, msg: StrideDone) -> None:
        metrics.STRIDES.inc()
        metrics.STRIDE_COMPUTE.observe(msg.compute_s)
        metrics.STRIDE_SNAPSHOT.observe(msg.snapshot_s)
        metrics.STRIDE_BATCH.observe(msg.batch_size)
        stride_s = (msg.processed_pos - session.processed_pos) / SAMPLE_RATE
        if not msg.final and msg.batch_size and stride_s > 0:  # a full stride the streaming model computed
            metrics.REAL_TIME_FACTOR.observe(msg.compute_s / msg.batch_size / stride_s)
        session.advance(msg.processed_pos)
        done = session.samples_processed
        if msg.tokens:
            session.add_stride(msg.tokens, msg.text)
            # A partial carries this stride's tokens and text only: its size, and the work to send it, stay flat
            # however long the session runs (a meeting's transcript is tens of thousands of characters).
            session.emit(Partial(tuple(msg.tokens), msg.text, done))
            if not msg.final:
                self._observe_latency(metrics.PARTIAL_LATENCY, session, msg.processed_pos)
        self._forget_arrivals(session)
        if self.cluster is not None and not msg.final:
            self.cluster.on_stride(session)
        if msg.final:
            # Online: the whole-session text FunASR post-processes once. 2pass/offline: the sentences joined.
            session.transcript = session.text if session.pipeline.mode.sentences else msg.transcript
            self._end(session, SessionState.FINISHED)
            session.emit(Final(session.transcript_tokens, session.transcript, msg.reason, done))

    def _on_sentence(self, session: Session, msg: SentenceDone) -> None:
        if msg.index != len(session.sentences):
            # Each sentence is sent once, in order, and a restore sends only the one its snapshot is ahead by
            # (engine/worker/core.py); anything else is a bug, and skipping or repeating a sentence would hide it.
            log.error(
                "session %s: sentence %d arrived, %d expected", session.id, msg.index, len(session.sentences),
                extra=logs.fields(session),
            )
            self._fail(session, ErrorCode.INFERENCE_FAILED, "sentences arrived out of order")
            return
        metrics.SENTENCES.inc()
        metrics.SENTENCE_COMPUTE.observe(msg.compute_s)
        metrics.SENTENCE_BATCH.observe(msg.batch_size)
        sentence = Sentence(
            msg.index, msg.text, msg.tokens, msg.start_ms, msg.end_ms, msg.timestamps,
            msg.audio_start * 1000 // SAMPLE_RATE, msg.audio_end * 1000 // SAMPLE_RATE,
        )
        session.sentences.append(sentence)
        session.emit(sentence)
        self._observe_latency(metrics.SENTENCE_LATENCY, session, msg.audio_end)
        self._forget_arrivals(session)

    @staticmethod
    def _observe_latency(histogram: Histogram, session: Session, ring_pos: int) -> None:
        """Time since the append that brought the audio up to `ring_pos` (the event was just emitted)."""
        arrived = session.arrival(ring_pos)
        if arrived is not None:
            histogram.observe(time.monotonic() - arrived)

    @staticmethod
    def _forget_arrivals(session: Session) -> None:
        """Strides to come end past the processed position, sentences to come past the last one's end."""
        heard = []
        if session.pipeline.mode.streams:
            heard.append(session.processed_pos)
        if session.pipeline.mode.sentences:
            heard.append(session.sentences[-1].audio_end_ms * SAMPLE_RATE // 1000 if session.sentences else 0)
        session.forget_arrivals(min(heard))

    def on_worker_lost(self, slot: int, why: str) -> None:
        self.placement.on_worker_lost(slot, self.sessions)

    def on_worker_ready(self, slot: int) -> None:
        self.placement.place_orphans(self.sessions)

    # --- endings ------------------------------------------------------------------------------------------

    def _fail(self, session: Session, code: ErrorCode, message: str) -> None:
        self._end(session, SessionState.FAILED)
        session.emit(Failure(code, message))

    def _end(self, session: Session, state: SessionState) -> None:
        """Free what the session holds; the record itself stays readable for finished_session_ttl_s."""
        session.state = state
        session.ended_at = time.monotonic()
        if self.cluster is not None:
            self.cluster.on_end(session)
        self.placement.forget(session.id)
        if session.ring is not None:
            session.ring.unlink()
            session.ring = None
        metrics.SESSIONS_OPEN.set(self.open_sessions())
        log.info(
            "session %s %s after %.1f s: %d samples received, %d processed%s",
            session.id, state.value, session.ended_at - session.created_at, session.samples_received,
            session.samples_processed, f" ({session.close_reason})" if session.close_reason else "",
            extra=logs.fields(session),
        )

    async def _reap_loop(self) -> None:
        s = self.settings
        period = min(1.0, s.session_idle_timeout_s / 4, s.max_session_s / 4)
        while True:
            await asyncio.sleep(period)
            try:
                self._reap(time.monotonic())
            except Exception:  # the reaper must outlive any one bad session
                log.exception("reaping idle, overlong and ended sessions failed")

    def _reap(self, now: float) -> None:
        s = self.settings
        for session in list(self.sessions.values()):
            if session.state is SessionState.OPEN and now - session.created_at > s.max_session_s:
                # Finalised like a close: its audio is flushed and `final` says "max_duration"; appends are refused.
                log.info(
                    "session %s reached PARASTREAM_MAX_SESSION_S (%g s): closing", session.id, s.max_session_s,
                    extra=logs.fields(session),
                )
                self.close(session.id, reason="max_duration")
            elif session.state is SessionState.OPEN and now - session.last_audio_at > s.session_idle_timeout_s:
                log.info(
                    "session %s idle for %.0f s: closing", session.id, now - session.last_audio_at,
                    extra=logs.fields(session),
                )
                metrics.SESSIONS_EVICTED.inc()
                self.close(session.id, reason="idle_timeout")
            elif session.ended_at is not None and now - session.ended_at > s.finished_session_ttl_s:
                del self.sessions[session.id]
        for session_id, (at, _owner) in list(self.moved.items()):
            if now - at > s.finished_session_ttl_s:
                del self.moved[session_id]
