"""The worker's logic, free of any I/O: sessions, their FunASR caches, and the stride schedule.

`WorkerCore` is driven by messages (`engine.messages`) and returns the messages to send back, so tests can run it
in-process against the real model, and `engine.worker.process` only wraps it with a socket loop.

The stride schedule is what makes served transcripts exact. FunASR's own loop, fed audio in 600 ms pieces with
`is_final` on the last, runs: every full stride non-final, then one final step on the remainder (0 to one stride
minus one sample). A session here runs exactly that sequence however its audio arrived: a full stride is processed
non-final as soon as it is in the ring, and the final step runs on close with whatever is left before `end_pos`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from engine.messages import (
    AbortSession,
    CloseSession,
    FromWorker,
    OpenSession,
    RestoreSession,
    SessionFailed,
    StreamOptions,
    StrideDone,
)
from engine.ring import RingReader
from engine.snapshot import SnapshotStore

log = logging.getLogger(__name__)

PCM_SCALE = 1.0 / 32768.0  # int16 -> float32 in [-1, 1), the scale soundfile gives FunASR's own demo


class StreamModel(Protocol):
    """What the core needs from a model; `engine.funasr_adapter.StreamingModel` is the real one."""

    def new_cache(self, opts: StreamOptions) -> dict[str, Any]: ...

    def step(self, cache: dict[str, Any], samples: np.ndarray, is_final: bool, opts: StreamOptions) -> list[str]: ...

    def text(self, tokens: list[str]) -> str: ...

    def cache_nbytes(self, cache: dict[str, Any]) -> int: ...


def pcm_to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) * np.float32(PCM_SCALE)


@dataclass
class SessionState:
    session_id: str
    ring: RingReader
    snapshots: SnapshotStore
    options: StreamOptions
    cache: dict[str, Any]
    cursor: int = 0  # absolute ring position processed up to
    end_pos: int | None = None  # set by close: the final step runs on [cursor, end_pos)
    close_reason: str = ""
    tokens: list[str] = field(default_factory=list)

    def next_step(self, write_pos: int) -> tuple[int, bool] | None:
        """(samples, is_final) of the step this session can run now, or None if it must wait for audio."""
        stride = self.options.stride_samples
        limit = write_pos if self.end_pos is None else min(write_pos, self.end_pos)
        if limit - self.cursor >= stride:
            return stride, False
        if self.end_pos is not None and write_pos >= self.end_pos:
            return self.end_pos - self.cursor, True
        return None


class WorkerCore:
    def __init__(self, model: StreamModel) -> None:
        self.model = model
        self.sessions: dict[str, SessionState] = {}
        self.strides = 0

    # --- messages in ---------------------------------------------------------------------------------------

    def open(self, msg: OpenSession | RestoreSession) -> list[FromWorker]:
        if msg.session_id in self.sessions:
            return [SessionFailed(msg.session_id, "session opened twice on one worker")]
        try:
            ring = RingReader.attach(msg.ring_name)
        except (FileNotFoundError, ValueError) as exc:
            # The session was aborted before we got here; nothing to do but say so.
            return [SessionFailed(msg.session_id, f"audio ring unavailable: {exc}")]
        store = SnapshotStore(ring)
        state = SessionState(msg.session_id, ring, store, msg.options, self.model.new_cache(msg.options))
        self.sessions[msg.session_id] = state
        return self._restore(state, msg) if isinstance(msg, RestoreSession) else []

    def _restore(self, state: SessionState, msg: RestoreSession) -> list[FromWorker]:
        """Take over from the last snapshot; report what the dead worker computed but never sent."""
        try:
            snapshot = state.snapshots.load()
        except Exception as exc:  # a torn or foreign segment: this session cannot be recovered
            self._drop(msg.session_id)
            return [SessionFailed(msg.session_id, f"snapshot unreadable: {type(exc).__name__}: {exc}")]
        if snapshot is not None:
            state.cache, state.cursor, state.tokens = snapshot.cache, snapshot.cursor, list(snapshot.tokens)
        state.end_pos, state.close_reason = msg.end_pos, msg.close_reason
        if state.cursor > msg.processed_pos:
            missed = state.tokens[msg.tokens_seen :]
            return [StrideDone(msg.session_id, state.cursor, tuple(missed), self.model.text(state.tokens))]
        return []

    def close(self, msg: CloseSession) -> list[FromWorker]:
        state = self.sessions.get(msg.session_id)
        if state is not None:
            state.end_pos = msg.end_pos
            state.close_reason = msg.reason
        return []

    def abort(self, msg: AbortSession) -> list[FromWorker]:
        self._drop(msg.session_id)
        return []

    # --- work ----------------------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return any(s.next_step(s.ring.write_pos) is not None for s in self.sessions.values())

    def run_once(self) -> list[FromWorker]:
        """One step for every session that can take one (round robin keeps sessions fair)."""
        out: list[FromWorker] = []
        for session_id in list(self.sessions):
            msg = self.step_session(session_id)
            if msg is not None:
                out.append(msg)
        return out

    def step_session(self, session_id: str) -> FromWorker | None:
        state = self.sessions[session_id]
        step = state.next_step(state.ring.write_pos)
        if step is None:
            return None
        n, is_final = step
        started = time.perf_counter()
        try:
            samples = pcm_to_float(state.ring.read(state.cursor, n))
            tokens = self.model.step(state.cache, samples, is_final, state.options)
        except Exception as exc:  # one session's failure must not take the worker down
            log.exception("session %s failed in inference", session_id)
            self._drop(session_id)
            return SessionFailed(session_id, f"inference failed: {type(exc).__name__}: {exc}")
        compute_s = time.perf_counter() - started
        self.strides += 1
        state.cursor += n
        state.tokens.extend(tokens)
        snapshot_s = 0.0
        if not is_final:
            # Snapshot first, release second: until the snapshot covers them, a replacement needs these samples.
            # (The final step needs no snapshot: after a crash it is simply run again from the last one.)
            saved = time.perf_counter()
            state.snapshots.save(state.cursor, state.tokens, state.cache)
            snapshot_s = time.perf_counter() - saved
            state.ring.release(state.cursor)
        text = self.model.text(state.tokens) if tokens or is_final else ""
        msg = StrideDone(
            session_id,
            state.cursor,
            tuple(tokens),
            text,
            final=is_final,
            reason=state.close_reason if is_final else "",
            compute_s=compute_s,
            snapshot_s=snapshot_s,
        )
        if is_final:
            self._drop(session_id)
        return msg

    # --- accounting ----------------------------------------------------------------------------------------

    def cache_bytes(self) -> int:
        return sum(self.model.cache_nbytes(s.cache) for s in self.sessions.values())

    def drop_all(self) -> None:
        for session_id in list(self.sessions):
            self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        state = self.sessions.pop(session_id, None)
        if state is not None:
            state.snapshots.close()
            state.ring.close()
