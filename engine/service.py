"""The engine as the HTTP layer uses it: sessions in, events out.

`Engine` owns the session registry and routing, and drives the supervisor. It runs on the API process's event loop
and imports neither torch nor FastAPI. Routing is sticky: a session is placed on the least-loaded ready worker when
it is created, and every message about it goes to that worker, so its cache never leaves that process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time

import numpy as np

from engine import metrics
from engine.audio import MODEL_SAMPLE_RATE, SUPPORTED_SAMPLE_RATES, Upsampler2x, check_pcm
from engine.errors import BufferFull, InvalidOptions, NotReady, ServiceFull, SessionNotFound, SessionNotOpen
from engine.messages import (
    AbortSession,
    AudioReady,
    CloseSession,
    FromWorker,
    OpenSession,
    SessionFailed,
    StreamOptions,
    StrideDone,
)
from engine.ring import RingFull, RingWriter, sweep_segments
from engine.sessions import Session, SessionState
from engine.settings import Settings
from engine.supervisor import Supervisor

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
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: dict[str, Session] = {}
        self.supervisor = Supervisor(settings, self._on_worker_message, self._on_worker_lost)
        self.accepting = False
        self.started = False
        self.stopped = False
        self._reaper: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.started = True
        stale = sweep_segments(stale_only=True)
        if stale:
            log.warning("removed %d shared-memory segments left by a previous instance", len(stale))
        await self.supervisor.start()
        self._reaper = asyncio.create_task(self._reap_loop())
        self.accepting = True

    async def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline:
            if self.supervisor.halt_reason:
                return False
            await asyncio.sleep(0.05)
        return self.ready

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.accepting = False
        if self._reaper:
            self._reaper.cancel()
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
            raise NotReady("the server is not accepting sessions", retry_after_s=5)
        if self.open_sessions() >= self.settings.max_sessions:
            metrics.SESSIONS_REJECTED.labels("full").inc()
            raise ServiceFull(
                f"{self.settings.max_sessions} sessions are open (PARASTREAM_MAX_SESSIONS)", retry_after_s=5
            )
        slots = self.supervisor.ready_slots()
        if not slots:
            metrics.SESSIONS_REJECTED.labels("not_ready").inc()
            raise NotReady(self.supervisor.halt_reason or "no worker is ready yet", retry_after_s=2)
        slot = min(slots, key=lambda s: (len(s.sessions), s.index))  # least loaded, then lowest slot
        session_id = secrets.token_hex(16)  # 128 random bits
        ring = RingWriter.create(self.settings.ring_capacity_samples)
        session = Session(
            session_id,
            options,
            sample_rate,
            slot.index,
            ring,
            upsampler=Upsampler2x() if sample_rate != MODEL_SAMPLE_RATE else None,
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

    def append(self, session_id: str, body: bytes) -> Session:
        session = self.get(session_id)
        if session.state is not SessionState.OPEN or session.ring is None:
            raise SessionNotOpen(f"session {session_id} is {session.state.value}; it takes no more audio")
        n = check_pcm(body)
        pcm = np.frombuffer(body, dtype="<i2")
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
        self.supervisor.send(session.worker, AudioReady(session_id))
        metrics.AUDIO_SECONDS.inc(n / session.sample_rate)
        return session

    def close(self, session_id: str, reason: str = "closed") -> Session:
        session = self.get(session_id)
        if session.state is SessionState.OPEN:
            session.state = SessionState.CLOSING
            session.close_reason = reason
            self.supervisor.send(session.worker, CloseSession(session_id, session.ring_pos, reason))
        elif session.state is not SessionState.CLOSING and session.state is not SessionState.FINISHED:
            raise SessionNotOpen(f"session {session_id} is {session.state.value}")
        return session  # closing twice is harmless: the client may have lost the first answer

    def abort(self, session_id: str) -> None:
        session = self.get(session_id)
        if session.state.holds_resources:
            self.supervisor.send(session.worker, AbortSession(session_id))
            self._end(session, SessionState.ABORTED)
            session.emit("error", {"code": "aborted", "message": "the session was deleted"})
        self.sessions.pop(session_id, None)

    # --- worker events (loop thread) ----------------------------------------------------------------------

    def _on_worker_message(self, slot: int, msg: FromWorker) -> None:
        session = self.sessions.get(getattr(msg, "session_id", ""))
        if session is None or not session.state.holds_resources or session.worker != slot:
            return  # aborted or already failed; late news is dropped
        match msg:
            case StrideDone():
                self._on_stride(session, msg)
            case SessionFailed(message=message):
                self._fail(session, "inference_failed", message)

    def _on_stride(self, session: Session, msg: StrideDone) -> None:
        metrics.STRIDES.inc()
        metrics.STRIDE_COMPUTE.observe(msg.compute_s)
        session.advance(msg.processed_pos)
        done = session.samples_processed
        if msg.tokens:
            session.tokens.extend(msg.tokens)
            session.text = msg.text
            session.emit("partial", {"tokens": list(msg.tokens), "text": msg.text, "samples_processed": done})
        if msg.final:
            session.text = msg.text
            self._end(session, SessionState.FINISHED)
            session.emit(
                "final",
                {"tokens": list(session.tokens), "text": session.text, "reason": msg.reason, "samples_processed": done},
            )

    def _on_worker_lost(self, slot: int, why: str) -> None:
        for session_id in list(self.supervisor.slots[slot].sessions):
            session = self.sessions.get(session_id)
            if session is not None and session.state.holds_resources:
                self._fail(session, "worker_died", f"the session's worker died ({why})")
        metrics.WORKER_RESTARTS.inc()

    # --- endings ------------------------------------------------------------------------------------------

    def _fail(self, session: Session, code: str, message: str) -> None:
        self._end(session, SessionState.FAILED)
        session.emit("error", {"code": code, "message": message})

    def _end(self, session: Session, state: SessionState) -> None:
        """Free what the session holds; the record itself stays readable for finished_session_ttl_s."""
        session.state = state
        session.ended_at = time.monotonic()
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
