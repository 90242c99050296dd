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
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from engine.messages import (
    AbortSession,
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
from engine.ring import RingReader
from engine.worker.snapshot import SnapshotStore

log = logging.getLogger(__name__)

PCM_SCALE = 1.0 / 32768.0  # int16 -> float32 in [-1, 1), the scale soundfile gives FunASR's own demo


class StreamModel(Protocol):
    """What the core needs from a model; `engine.model.adapter.StreamingModel` is the real one."""

    def new_cache(self, opts: StreamOptions) -> dict[str, Any]: ...

    def step(self, cache: dict[str, Any], samples: np.ndarray, is_final: bool, opts: StreamOptions) -> list[str]: ...

    def step_batch(
        self, requests: list[tuple[dict[str, Any], np.ndarray, bool, StreamOptions]]
    ) -> list[list[str]]: ...

    def text(self, tokens: list[str]) -> str: ...

    def cache_nbytes(self, cache: dict[str, Any]) -> int: ...


def pcm_to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) * np.float32(PCM_SCALE)


@dataclass
class HeldSession:
    session_id: str
    ring: RingReader
    snapshots: SnapshotStore
    options: StreamOptions
    cache: dict[str, Any]
    processed_pos: int = 0  # absolute ring position processed up to
    end_pos: int | None = None  # set by close: the final step runs on [processed_pos, end_pos)
    close_reason: str = ""
    tokens: list[str] = field(default_factory=list)

    def next_step(self, write_pos: int) -> tuple[int, bool] | None:
        """(samples, is_final) of the step this session can run now, or None if it must wait for audio."""
        stride = self.options.stride_samples
        limit = write_pos if self.end_pos is None else min(write_pos, self.end_pos)
        if limit - self.processed_pos >= stride:
            return stride, False
        if self.end_pos is not None and write_pos >= self.end_pos:
            return self.end_pos - self.processed_pos, True
        return None


class WorkerCore:
    """`max_batch`: most sessions one forward pass takes (1: no batching)."""

    def __init__(self, model: StreamModel, max_batch: int = 1) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model
        self.max_batch = max_batch
        self.sessions: dict[str, HeldSession] = {}
        self.strides = 0
        self.batches = 0
        self._turn: str | None = None  # the session served last: the next batch starts after it

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
        state = HeldSession(msg.session_id, ring, store, msg.options, self.model.new_cache(msg.options))
        self.sessions[msg.session_id] = state
        return self._restore(state, msg) if isinstance(msg, RestoreSession) else []

    def _restore(self, state: HeldSession, msg: RestoreSession) -> list[FromWorker]:
        """Take over from the last snapshot; report what the dead worker computed but never sent.

        The worker sends each stride's result right after its snapshot, so the snapshot is at most that one stride
        ahead of what the API process heard (`msg.tokens`); its last stride's tokens are the ones to send."""
        try:
            snapshot = state.snapshots.load()
        except Exception as exc:  # a torn or foreign segment: this session cannot be recovered
            self._drop(msg.session_id)
            return [SessionFailed(msg.session_id, f"snapshot unreadable: {type(exc).__name__}: {exc}")]
        state.tokens = list(msg.tokens)
        state.end_pos, state.close_reason = msg.end_pos, msg.close_reason
        if snapshot is None:
            return []
        state.cache, state.processed_pos = snapshot.cache, snapshot.processed_pos
        unreported = snapshot.token_count - len(msg.tokens)
        ahead = state.processed_pos > msg.processed_pos
        if not (0 <= unreported <= len(snapshot.last_tokens) and (ahead or unreported == 0)):
            self._drop(msg.session_id)
            return [SessionFailed(msg.session_id, "snapshot does not follow from the tokens already reported")]
        if not ahead:
            return []
        missed = snapshot.last_tokens[len(snapshot.last_tokens) - unreported :]
        state.tokens.extend(missed)
        return [StrideDone(msg.session_id, state.processed_pos, tuple(missed), self.model.text(list(missed)))]

    def close(self, msg: CloseSession) -> list[FromWorker]:
        state = self.sessions.get(msg.session_id)
        if state is not None:
            state.end_pos = msg.end_pos
            state.close_reason = msg.reason
        return []

    def abort(self, msg: AbortSession) -> list[FromWorker]:
        self._drop(msg.session_id)
        return []

    def detach(self, msg: DetachSession) -> list[FromWorker]:
        """Let the session go to another worker. Messages are applied between strides, and every non-final stride
        ends with a snapshot of (processed_pos, tokens, cache), so that snapshot is the whole state (no stride yet: no
        snapshot, processed_pos 0, and the new worker starts fresh). `_drop` only closes our handles: the ring and the
        snapshot segment stay for the new worker. An unknown id (it just finished, failed or was aborted; its final
        StrideDone went out before) gets no answer."""
        state = self.sessions.get(msg.session_id)
        if state is None:
            return []
        processed_pos = state.processed_pos
        self._drop(msg.session_id)
        return [SessionDetached(msg.session_id, processed_pos)]

    # --- work ----------------------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return any(s.next_step(s.ring.write_pos) is not None for s in self.sessions.values())

    def run_once(self) -> list[FromWorker]:
        """One step for every session that can take one, in batches of at most `max_batch`."""
        out: list[FromWorker] = []
        pending = self._ready_in_turn()
        for start in range(0, len(pending), self.max_batch):
            out.extend(self._run(pending[start : start + self.max_batch]))
        return out

    def run_batch(self) -> list[FromWorker]:
        """One batch: up to `max_batch` sessions with a stride ready, taken round robin so none starves."""
        batch = self._ready_in_turn()[: self.max_batch]
        if batch:
            self._turn = batch[-1]
        return self._run(batch)

    def _ready_in_turn(self) -> list[str]:
        """Sessions with a step ready, starting after the last one served."""
        ids = list(self.sessions)
        if self._turn in self.sessions:
            cut = ids.index(self._turn) + 1
            ids = ids[cut:] + ids[:cut]
        return [sid for sid in ids if self.sessions[sid].next_step(self.sessions[sid].ring.write_pos) is not None]

    def _run(self, session_ids: list[str]) -> list[FromWorker]:
        """Run one step for each session as one batch, then snapshot, release and report each of them."""
        out: list[FromWorker] = []
        work: list[tuple[HeldSession, int, bool, np.ndarray]] = []
        for session_id in session_ids:
            state = self.sessions[session_id]
            step = state.next_step(state.ring.write_pos)
            if step is None:
                continue
            n, is_final = step
            try:
                work.append((state, n, is_final, pcm_to_float(state.ring.read(state.processed_pos, n))))
            except Exception as exc:  # a ring that vanished or was corrupted fails its own session only
                out.append(self._fail(session_id, exc))
        if not work:
            return out
        started = time.perf_counter()
        try:
            if len(work) == 1:
                state, _, is_final, samples = work[0]
                results = [self.model.step(state.cache, samples, is_final, state.options)]
            else:
                results = self.model.step_batch([(s.cache, x, f, s.options) for s, _, f, x in work])
        except Exception:
            if len(work) == 1:
                return out + [self._fail(work[0][0].session_id, sys.exc_info()[1])]
            # Some session's stride broke the batch. Each cache may be part-way through this stride, so put each
            # back to its last snapshot (taken after its previous stride) and run them one by one: the one that
            # fails again fails alone, and the others lose nothing.
            log.exception("a batch of %d failed; rerunning its sessions one by one", len(work))
            for state, *_ in work:
                self._rewind(state)
            for state, *_ in work:
                if state.session_id in self.sessions:
                    out.extend(self._run([state.session_id]))
            return out
        compute_s = time.perf_counter() - started
        self.strides += len(work)
        self.batches += 1
        for (state, n, is_final, _), tokens in zip(work, results):
            out.append(self._finish_step(state, n, is_final, tokens, compute_s, len(work)))
        return out

    def _finish_step(
        self, state: HeldSession, n: int, is_final: bool, tokens: list[str], compute_s: float, batch_size: int
    ) -> FromWorker:
        state.processed_pos += n
        state.tokens.extend(tokens)
        snapshot_s = 0.0
        if not is_final:
            # Snapshot first, release second: until the snapshot covers them, a replacement needs these samples.
            # (The final step needs no snapshot: after a crash it is simply run again from the last one.)
            saved = time.perf_counter()
            state.snapshots.save(state.processed_pos, len(state.tokens), tuple(tokens), state.cache)
            snapshot_s = time.perf_counter() - saved
            state.ring.release(state.processed_pos)
        # Per-stride work must not grow with the session's age: the stride's own text, and the whole transcript
        # only once, on the final.
        msg = StrideDone(
            state.session_id,
            state.processed_pos,
            tuple(tokens),
            self.model.text(tokens) if tokens else "",
            transcript=self.model.text(state.tokens) if is_final else "",
            final=is_final,
            reason=state.close_reason if is_final else "",
            compute_s=compute_s,
            snapshot_s=snapshot_s,
            batch_size=batch_size,
        )
        if is_final:
            self._drop(state.session_id)
        return msg

    def _rewind(self, state: HeldSession) -> None:
        """Put a session back to its last snapshot (a fresh cache if it has none: it had run no stride)."""
        try:
            snapshot = state.snapshots.load()
        except Exception as exc:
            log.error("session %s: snapshot unreadable while rewinding: %s", state.session_id, exc)
            self._drop(state.session_id)
            return
        if snapshot is None:
            state.cache = self.model.new_cache(state.options)
        else:
            state.cache = snapshot.cache
            state.processed_pos = snapshot.processed_pos
            del state.tokens[snapshot.token_count :]

    def _fail(self, session_id: str, exc: BaseException | None) -> FromWorker:
        """One session's failure must not take the worker down."""
        log.error("session %s failed in inference", session_id, exc_info=exc)
        self._drop(session_id)
        return SessionFailed(session_id, f"inference failed: {type(exc).__name__}: {exc}")

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
