"""The engine as the HTTP layer uses it: sessions in, events out.

`Engine` owns the session registry and routing, and drives the supervisor. It runs on the API process's event loop
and imports neither torch nor FastAPI. Routing is sticky: a session is placed on the least-loaded ready worker when
it is created, and every message about it goes to that worker, so its cache lives in that process. A session moves
only whole: after a crash (from its snapshot, `_place_orphans`) or when the balancer (or an operator) migrates it
between two strides (`start_migration`), which hands its last snapshot to the new worker the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from dataclasses import dataclass

import numpy as np

from engine import metrics
from engine.audio import MODEL_SAMPLE_RATE, SUPPORTED_SAMPLE_RATES, Upsampler2x, check_pcm
from engine.errors import (
    BufferFull,
    EngineError,
    InvalidOptions,
    InvalidWorker,
    MigrationInFlight,
    NotReady,
    OffsetGap,
    ServiceFull,
    SessionNotFound,
    SessionNotOpen,
)
from engine.messages import (
    AbortSession,
    AudioReady,
    CloseSession,
    DetachSession,
    FromWorker,
    OpenSession,
    RestoreSession,
    SessionDetached,
    SessionFailed,
    StreamOptions,
    StrideDone,
)
from engine.ring import RingFull, RingWriter, sweep_segments
from engine.sessions import Session, SessionState
from engine.settings import Settings
from engine.supervisor import Supervisor, WorkerSlot

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


def placement_key(slot: WorkerSlot) -> tuple[int, int]:
    """Least loaded first (sessions holding resources there), then the lowest slot: placement, restores and the
    balancer all measure load this one way."""
    return len(slot.sessions), slot.index


@dataclass(frozen=True)
class Migration:
    """A move asked of `source` (DetachSession sent) and not yet answered (SessionDetached)."""

    source: int
    target: int
    reason: str  # "rebalance" | "manual"


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self.supervisor = Supervisor(settings, self._on_worker_message, self._on_worker_lost, self._place_orphans)
        # Sessions waiting for a ready worker (in order); the value says whether it was a crash (which counts against
        # max_session_restores) rather than a move that found no worker to go to.
        self._orphans: dict[str, bool] = {}
        self._migrations: dict[str, Migration] = {}  # at most one at a time (see start_migration)
        self.accepting = False
        self.started = False
        self.stopped = False
        self.draining = False
        self._reaper: asyncio.Task[None] | None = None
        self._balancer: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True
        stale = sweep_segments(stale_only=True)
        if stale:
            log.warning("removed %d shared-memory segments left by a previous instance", len(stale))
        await self.supervisor.start()
        self._reaper = asyncio.create_task(self._reap_loop())
        if self.settings.rebalance_interval_s > 0:
            self._balancer = asyncio.create_task(self._balance_loop())
        self.accepting = True

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
        runs out, gets an `error` event saying the server is shutting down."""
        self.accepting = False
        self.draining = True
        targets = {s.id: s.ring_pos // s.options.stride_samples * s.options.stride_samples for s in self._live()}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = [
                s for s in self._live()
                if s.state is SessionState.CLOSING or s.processed_pos < targets.get(s.id, 0)
            ]
            if not busy:
                break
            await asyncio.sleep(0.05)
        for session in self._live():
            done = session.samples_processed
            self._fail(session, "shutdown", f"the server is shutting down; audio up to sample {done} was transcribed")

    def _live(self) -> list[Session]:
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
                self._fail(session, "shutdown", "the server is shutting down")
        await self.supervisor.stop()
        sweep_segments()  # anything this process still owns

    @property
    def ready(self) -> bool:
        return self.accepting and self.supervisor.ready and not self.supervisor.halt_reason

    def open_sessions(self) -> int:
        return sum(1 for s in self.sessions.values() if s.state.holds_resources)

    # --- the API ------------------------------------------------------------------------------------------

    def create_session(self, sample_rate: int, options: StreamOptions) -> Session:
        if sample_rate not in SUPPORTED_SAMPLE_RATES:
            raise InvalidOptions(f"sample_rate must be one of {list(SUPPORTED_SAMPLE_RATES)}")
        if not self.accepting:
            raise NotReady("the server is not accepting sessions (starting or shutting down)", retry_after_s=5)
        if self.open_sessions() >= self.settings.max_sessions:
            metrics.SESSIONS_REJECTED.labels("full").inc()
            raise ServiceFull(
                f"{self.settings.max_sessions} sessions are open (PARASTREAM_MAX_SESSIONS)", retry_after_s=5
            )
        slots = self.supervisor.ready_slots()
        if not slots:
            metrics.SESSIONS_REJECTED.labels("not_ready").inc()
            raise NotReady(self.supervisor.halt_reason or "no worker is ready yet", retry_after_s=2)
        slot = min(slots, key=placement_key)
        session_id = secrets.token_hex(16)  # 128 random bits
        ring = RingWriter.create(self.settings.ring_capacity_samples)
        session = Session(
            session_id,
            options,
            sample_rate,
            slot.index,
            ring,
            upsampler=Upsampler2x() if sample_rate != MODEL_SAMPLE_RATE else None,
            history=self.settings.event_history,
        )
        self.sessions[session_id] = session
        slot.sessions.add(session_id)
        self.supervisor.send(slot.index, OpenSession(session_id, ring.name, options))
        metrics.SESSIONS_CREATED.inc()
        metrics.SESSIONS_OPEN.set(self.open_sessions())
        return session

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"no session {session_id}")
        return session

    def append(self, session_id: str, body: bytes, offset: int | None = None) -> Session:
        """Append PCM. With `offset` (the sample index of the body's first sample) a retry is safe: samples already
        received are acknowledged and skipped, and an offset past the end is refused with the expected one."""
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
            raise SessionNotOpen(f"session {session_id} is {session.state.value}; it takes no more audio")
        if self.draining:
            raise NotReady("the server is shutting down; it takes no more audio", retry_after_s=5)
        needed = n * MODEL_SAMPLE_RATE // session.sample_rate
        if needed > session.ring.free:  # checked before the resampler's state moves
            metrics.APPENDS_REJECTED.inc()
            behind_s = (session.ring.used + needed - session.ring.capacity) / MODEL_SAMPLE_RATE
            raise BufferFull(
                f"session {session_id}'s buffer is full: {needed} samples do not fit in {session.ring.free} free; "
                "the worker is behind, retry later",
                retry_after_s=max(1, math.ceil(behind_s)),
            )
        if session.upsampler is not None:
            pcm = session.upsampler.process(pcm)
        try:
            session.ring.write(pcm.tobytes())
        except RingFull as exc:  # pragma: no cover - checked above
            raise BufferFull(str(exc), retry_after_s=1) from exc
        session.samples_received += n
        session.last_audio_at = time.monotonic()
        self.supervisor.send(self._route(session), AudioReady(session_id))
        metrics.AUDIO_SECONDS.inc(n / session.sample_rate)
        return session

    def close(self, session_id: str, reason: str = "closed") -> Session:
        session = self.get(session_id)
        if session.state is SessionState.OPEN:
            session.state = SessionState.CLOSING
            session.close_reason = reason
            session.end_pos = session.ring_pos
            self.supervisor.send(self._route(session), CloseSession(session_id, session.end_pos, reason))
        elif session.state is not SessionState.CLOSING and session.state is not SessionState.FINISHED:
            raise SessionNotOpen(f"session {session_id} is {session.state.value}")
        return session  # closing twice is harmless: the client may have lost the first answer

    def abort(self, session_id: str) -> None:
        session = self.get(session_id)
        if session.state.holds_resources:
            self.supervisor.send(self._route(session), AbortSession(session_id))
            self._end(session, SessionState.ABORTED)
            session.emit("error", {"code": "aborted", "message": "the session was deleted"})
        self.sessions.pop(session_id, None)

    def _route(self, session: Session) -> int | None:
        """The worker to tell about a session: none while it moves. Its old worker has been sent DetachSession (and
        drops it before reading anything sent later), and the RestoreSession to the new one carries the ring, the
        end position of a close, and the rest; an abort needs no message at all."""
        return None if session.id in self._migrations else session.worker

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
        the target's slot.

        The old worker is sent DetachSession: between two strides it drops the session (its last snapshot already
        holds cache, cursor and tokens) and answers SessionDetached, after every StrideDone of it. Only then does
        the new worker get the RestoreSession a crash restore would send (`_on_detached`), so the two never hold the
        session at once and the transcript is the one a single worker gives. Meanwhile appends go into the ring as
        usual. One move at a time: a move waits for the old worker's current stride, and the balancer looks at loads
        only when none is under way, so it never decides on counts that are about to change.

        Raises SessionNotFound, SessionNotOpen (not open: a closing session is about to end anyway), InvalidWorker
        (no such slot, or the one it is on), MigrationInFlight, NotReady (target not ready, shutting down)."""
        session = self.get(session_id)
        if session.state is not SessionState.OPEN or session.ring is None:
            raise SessionNotOpen(f"session {session_id} is {session.state.value}; only an open session is moved")
        slots = self.supervisor.slots
        if target is not None and not 0 <= target < len(slots):
            raise InvalidWorker(f"no worker {target}: the workers are 0..{len(slots) - 1}", worker=target)
        if target is not None and target == session.worker:
            raise InvalidWorker(f"session {session_id} is on worker {target} already", worker=target)
        if self._migrations:
            moving = next(iter(self._migrations))
            raise MigrationInFlight(f"session {moving} is being moved; one move at a time", retry_after_s=1)
        source = session.worker
        if source is None:
            raise MigrationInFlight(f"session {session_id} is being carried over after a crash", retry_after_s=1)
        if self.draining or not self.accepting:
            raise NotReady("the server is not accepting work (starting or shutting down)", retry_after_s=5)
        if target is None:
            others = [slot for slot in self.supervisor.ready_slots() if slot.index != source]
            if not others:
                raise NotReady("no other worker is ready", retry_after_s=2)
            target = min(others, key=placement_key).index
        elif not slots[target].ready:
            raise NotReady(f"worker {target} is not ready", retry_after_s=2)
        if not self.supervisor.send(source, DetachSession(session_id)):
            raise NotReady(f"worker {source} is being replaced", retry_after_s=1)
        self._migrations[session_id] = Migration(source, target, reason)
        loads = {slot.index: len(slot.sessions) for slot in self.supervisor.ready_slots()}
        log.info(
            "moving session %s from worker %d to worker %d (%s; sessions per ready worker: %s)",
            session_id, source, target, reason, loads,
        )
        return target

    def _on_detached(self, session: Session, msg: SessionDetached) -> None:
        """The old worker let the session go; every stride it computed has been heard. Restore it on the target."""
        move = self._migrations.pop(session.id, None)
        source = session.worker
        assert source is not None  # _on_worker_message only passes messages from the session's worker
        self.supervisor.slots[source].sessions.discard(session.id)
        slots = self.supervisor.slots
        slot = slots[move.target] if move is not None else None  # (no move asked: still place it somewhere)
        if slot is None or not slot.ready:
            # The target died or was halted meanwhile: the least-loaded ready worker takes it (maybe the old one).
            ready = self.supervisor.ready_slots()
            if not ready:
                session.worker = None
                self._orphans[session.id] = False
                self._place_orphans()
                return
            slot = min(ready, key=placement_key)
            target = move.target if move else None
            log.warning("session %s: worker %s is gone; moving it to worker %d instead", session.id, target, slot.index)
        self._restore_on(slot, session)
        if slot.index != source:
            session.migrations += 1
            metrics.SESSIONS_MIGRATED.labels(move.reason if move else "manual").inc()
        log.info(
            "session %s moved from worker %d to worker %d at sample %d", session.id, source, slot.index, msg.cursor
        )

    async def _balance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.rebalance_interval_s)
            try:
                self._rebalance()
            except Exception:  # the balancer must outlive any one bad step
                log.exception("load balancing step failed")

    def _rebalance(self) -> str | None:
        """Move at most one session from the busiest ready worker to the idlest when their session counts differ by
        `rebalance_spread` or more; returns its id. Placement already evens out new sessions, so this mends what
        endings leave behind (long calls piling up on one worker while the other's calls finished).

        Which session: the newest open one. How much audio a session has still to come is unknown; the newest is the
        best guess for the most, so the move pays off longest, and it has the least history to hand over. Closing
        sessions stay: they are about to end."""
        if self._migrations or self._orphans or not self.accepting or self.draining:
            return None  # (orphans: restores are about to change the counts)
        slots = self.supervisor.ready_slots()
        if len(slots) < 2:
            return None
        busiest = max(slots, key=lambda slot: (len(slot.sessions), -slot.index))
        idlest = min(slots, key=placement_key)
        if len(busiest.sessions) - len(idlest.sessions) < self.settings.rebalance_spread:
            return None
        candidates = [
            session
            for session_id in busiest.sessions
            if (session := self.sessions.get(session_id)) is not None and session.state is SessionState.OPEN
        ]
        if not candidates:
            return None
        session = max(candidates, key=lambda s: s.created_at)
        return session.id if self.migrate(session.id, idlest.index, reason="rebalance") else None

    # --- worker events (loop thread) ----------------------------------------------------------------------

    def _on_worker_message(self, slot: int, msg: FromWorker) -> None:
        session = self.sessions.get(getattr(msg, "session_id", ""))
        if session is None or not session.state.holds_resources or session.worker != slot:
            # Aborted, failed, or from a worker that no longer serves it: late news is dropped. A moving session's
            # `worker` stays its old one until SessionDetached (which follows all of that worker's StrideDones) and
            # only then becomes the new one, so each worker's news is taken exactly while it holds the session.
            return
        match msg:
            case StrideDone():
                self._on_stride(session, msg)
            case SessionFailed(message=message):
                self._fail(session, "inference_failed", message)
            case SessionDetached():
                self._on_detached(session, msg)

    def _on_stride(self, session: Session, msg: StrideDone) -> None:
        metrics.STRIDES.inc()
        metrics.STRIDE_COMPUTE.observe(msg.compute_s)
        metrics.STRIDE_SNAPSHOT.observe(msg.snapshot_s)
        metrics.STRIDE_BATCH.observe(msg.batch_size)
        session.advance(msg.processed_pos)
        done = session.samples_processed
        if msg.tokens:
            session.add_stride(msg.tokens, msg.text)
            # A partial carries this stride's tokens and text only: its size, and the work to send it, stay flat
            # however long the session runs (a meeting's transcript is tens of thousands of characters).
            session.emit("partial", {"tokens": list(msg.tokens), "text": msg.text, "samples_processed": done})
        if msg.final:
            session.transcript = msg.transcript
            self._end(session, SessionState.FINISHED)
            session.emit(
                "final",
                {"tokens": list(session.tokens), "text": session.text, "reason": msg.reason, "samples_processed": done},
            )

    def _on_worker_lost(self, slot: int, why: str) -> None:
        """The worker's sessions are not lost: their state is in their snapshots and their audio in their rings.
        Each goes to a ready worker (maybe the replacement in the same slot), which carries on from there."""
        lost = self.supervisor.slots[slot].sessions
        for session_id in list(lost):
            # A session moving away from this worker is restored once, here, as a crash: the move is off (its
            # SessionDetached, if it was sent at all, carries the dead generation and is dropped). A session moving
            # *to* this worker is not in its set yet; `_on_detached` sends it elsewhere.
            self._migrations.pop(session_id, None)
            session = self.sessions.get(session_id)
            if session is not None and session.state.holds_resources:
                session.worker = None
                self._orphans[session_id] = True
        lost.clear()
        metrics.WORKER_RESTARTS.inc()
        self._place_orphans()

    def _place_orphans(self, _ready_slot: int | None = None) -> None:
        if not self._orphans:
            return
        if not self.supervisor.ready_slots():
            if not self.supervisor.any_hope:  # every slot is halted: nobody will ever take them
                for session_id in list(self._orphans):
                    session = self.sessions.get(session_id)
                    self._orphans.pop(session_id)
                    if session is not None and session.state.holds_resources:
                        self._fail(session, "worker_died", "its worker died and no healthy worker is left")
            return
        for session_id in list(self._orphans):
            crashed = self._orphans.pop(session_id)
            session = self.sessions.get(session_id)
            if session is None or not session.state.holds_resources or session.ring is None:
                continue
            slot = min(self.supervisor.ready_slots(), key=placement_key)
            if not crashed:  # a move whose worker went away: not a restore
                self._restore_on(slot, session)
                continue
            if session.restores >= self.settings.max_session_restores:
                # A session that keeps killing workers (a poison input) must not take them all down in turn.
                self._fail(session, "worker_died", f"its worker died {session.restores + 1} times; giving up on it")
                continue
            session.restores += 1
            self._restore_on(slot, session)
            metrics.SESSIONS_RESTORED.inc()
            log.warning("session %s restored on worker %d (restore %d)", session_id, slot.index, session.restores)

    def _restore_on(self, slot: WorkerSlot, session: Session) -> None:
        """Hand the session to `slot`'s worker: it loads the last snapshot and replays the ring from there, after a
        crash and after a move alike. It is told what the API process has heard, so nothing is reported twice."""
        assert session.ring is not None
        session.worker = slot.index
        slot.sessions.add(session.id)
        closing = session.state is SessionState.CLOSING
        self.supervisor.send(
            slot.index,
            RestoreSession(
                session.id,
                session.ring.name,
                session.options,
                session.processed_pos,
                tuple(session.tokens),
                session.end_pos if closing else None,
                session.close_reason,
            ),
        )

    # --- endings ------------------------------------------------------------------------------------------

    def _fail(self, session: Session, code: str, message: str) -> None:
        self._end(session, SessionState.FAILED)
        session.emit("error", {"code": code, "message": message})

    def _end(self, session: Session, state: SessionState) -> None:
        """Free what the session holds; the record itself stays readable for finished_session_ttl_s."""
        session.state = state
        session.ended_at = time.monotonic()
        self._orphans.pop(session.id, None)
        self._migrations.pop(session.id, None)
        if session.worker is not None:
            self.supervisor.slots[session.worker].sessions.discard(session.id)
        if session.ring is not None:
            session.ring.unlink()
            session.ring = None
        metrics.SESSIONS_OPEN.set(self.open_sessions())

    async def _reap_loop(self) -> None:
        s = self.settings
        period = min(1.0, s.session_idle_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(Exception):  # the reaper must outlive any one bad session
                self._reap(time.monotonic())

    def _reap(self, now: float) -> None:
        s = self.settings
        for session in list(self.sessions.values()):
            if session.state is SessionState.OPEN and now - session.last_audio_at > s.session_idle_timeout_s:
                log.info("session %s idle for %.0f s: closing", session.id, now - session.last_audio_at)
                metrics.SESSIONS_EVICTED.inc()
                self.close(session.id, reason="idle_timeout")
            elif session.ended_at is not None and now - session.ended_at > s.finished_session_ttl_s:
                del self.sessions[session.id]
