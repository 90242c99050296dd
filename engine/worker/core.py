"""The worker's logic, free of any I/O: sessions, their FunASR caches, and the stride schedule.

`WorkerCore` is driven by messages (`engine.messages`) and returns the messages to send back, so tests can run it
in-process against the real model, and `engine.worker.process` only wraps it with a socket loop.

The stride schedule is what makes served transcripts exact. FunASR's own loop, fed audio in 600 ms pieces with
`is_final` on the last, runs: every full stride non-final, then one final step on the remainder (0 to one stride
minus one sample). A session here runs exactly that sequence however its audio arrived: a full stride is processed
non-final as soon as it is in the ring, and the final step runs on close with whatever is left before `end_pos`.

A 2pass or offline session (docs/pipeline.md) also runs the VAD over its audio as it arrives, 60 ms at a time
(`engine.worker.sentences`). A sentence that ends is decoded by the offline model on the worker's low-priority
second-pass thread (`engine.worker.second_pass`), batched with other sessions' sentences, while strides go on; the loop
then punctuates it and holds it until the partial of the stride it ended in is out. A session's events therefore come
in an order fixed by its audio alone (the partial of stride k, the sentences that ended in stride k, stride k + 1...),
whatever the load, a crash or a move: its stride k + 1 waits for such a sentence (other sessions' strides do not).
On close, the VAD runs over the tail, what is left is decoded, then the session ends; the streaming model's final
step is skipped, since FunASR's 2pass server throws its result away too.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from engine import logs
from engine.messages import (
    AbortSession,
    CloseSession,
    DetachSession,
    FromWorker,
    OpenSession,
    PipelineOptions,
    RestoreSession,
    SentenceDone,
    SessionDetached,
    SessionFailed,
    StreamOptions,
    StrideDone,
)
from engine.ring import RingReader
from engine.units import SAMPLE_RATE, VAD_FRAME_SAMPLES
from engine.worker.second_pass import Done, Job, OfflineDecoder, OfflineResult, SecondPass
from engine.worker.sentences import PendingSentence, SentenceTracker, Vad
from engine.worker.snapshot import SnapshotStore

log = logging.getLogger(__name__)

PCM_SCALE = 1.0 / 32768.0
# The VAD takes at most this much of one session's audio per turn of the loop (one default stride, ~30 ms of work), so
# a client that appends 20 s at once does not hold the other sessions' strides for a second.
VAD_SAMPLES_PER_TURN = 10 * VAD_FRAME_SAMPLES  # int16 -> float32 in [-1, 1), the scale soundfile gives FunASR's own demo


class StreamModel(Protocol):
    """What the core needs from a model; `engine.model.adapter.StreamingModel` is the real one."""

    def new_cache(self, opts: StreamOptions) -> dict[str, Any]: ...

    def step(self, cache: dict[str, Any], samples: np.ndarray, is_final: bool, opts: StreamOptions) -> list[str]: ...

    def step_batch(
        self, requests: list[tuple[dict[str, Any], np.ndarray, bool, StreamOptions]]
    ) -> list[list[str]]: ...

    def text(self, tokens: list[str]) -> str: ...

    def cache_nbytes(self, cache: dict[str, Any]) -> int: ...


class Punctuator(Protocol):
    """`engine.model.punctuation.PuncModel`: punctuates a sentence, carrying a cache to the next."""

    def new_cache(self) -> dict[str, Any]: ...

    def punctuate(self, text: str, cache: dict[str, Any]) -> str: ...


@dataclass(frozen=True)
class SentenceModels:
    """The 2pass models, loaded once and shared like the streaming model."""

    vad: Vad
    offline: OfflineDecoder
    punc: Punctuator | None = None
    max_batch: int = 1  # most sentences one offline forward pass takes

    def to(self, device: str) -> None:
        """Move the offline and punctuation models to a worker's GPU. The VAD stays on the CPU: one 60 ms frame's
        FSMN is cheaper than moving the frame."""
        for model in (self.offline, self.punc):
            move = getattr(model, "to", None)
            if move is not None:
                move(device)


@dataclass
class SentenceProgress:
    """A 2pass/offline session's sentence path: part of its snapshot, so a restore or a move carries on exactly."""

    tracker: SentenceTracker
    punc_cache: dict[str, Any]
    ready: list[SentenceDone] = field(default_factory=list)  # decoded, waiting for the partial of their stride
    sent: int = 0  # sentences sent (an empty decode is not sent, as FunASR sends none)
    # The sentences sent since the session's last stride: the worker sends a step's messages together, so a crash
    # can lose a stride and the sentences after it; a restore resends those the API process never heard.
    recent: list[SentenceDone] = field(default_factory=list)


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
    last_tokens: tuple[str, ...] = ()  # the last stride's: every snapshot carries them (see _restore)
    pipeline: PipelineOptions = PipelineOptions()
    sentences: SentenceProgress | None = None  # 2pass and offline sessions only
    epoch: int = 0  # which incarnation of the session a second-pass result belongs to (see _submit)
    protocol: str = "rest"  # the door it came in by, for log lines about it

    def next_step(self, write_pos: int) -> tuple[int, bool] | None:
        """(samples, is_final) of the step this session can run now, or None if it must wait for audio (or, in 2pass
        and offline mode, for its ended sentences to be decoded first)."""
        if self.sentences is not None and any(p.audio_end <= self.processed_pos for p in self.sentences.tracker.pending):
            return None  # a sentence that ended in the last stride goes out first (see the module docstring)
        stride = self.options.stride_samples
        limit = write_pos if self.end_pos is None else min(write_pos, self.end_pos)
        if limit - self.processed_pos >= stride:
            return stride, False
        if self.end_pos is not None and write_pos >= self.end_pos:
            return self.end_pos - self.processed_pos, True
        return None


class WorkerCore:
    """`max_batch`: most sessions one forward pass takes (1: no batching)."""

    def __init__(
        self,
        model: StreamModel,
        max_batch: int = 1,
        sentence_models: SentenceModels | None = None,
        threaded_second_pass: bool = True,
        second_pass_cpus: tuple[int, ...] = (),
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model
        self.max_batch = max_batch
        self.sentence_models = sentence_models
        self.second_pass = (
            SecondPass(sentence_models.offline, threaded_second_pass, second_pass_cpus)
            if sentence_models is not None
            else None
        )
        self._submitted: set[tuple[str, int, int]] = set()  # (session, epoch, audio_start) on the second pass
        self._epochs = 0
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
        if msg.pipeline.mode.sentences and self.sentence_models is None:
            ring.close()
            return [SessionFailed(msg.session_id, f"mode {msg.pipeline.mode.value} needs the sentence models")]
        store = SnapshotStore(ring)
        state = HeldSession(
            msg.session_id, ring, store, msg.options, self.model.new_cache(msg.options), pipeline=msg.pipeline,
            protocol=msg.protocol,
        )
        if msg.pipeline.mode.sentences:
            state.sentences = self._new_sentences()
            state.epoch = self._next_epoch()
        self.sessions[msg.session_id] = state
        return self._restore(state, msg) if isinstance(msg, RestoreSession) else []

    def _next_epoch(self) -> int:
        self._epochs += 1
        return self._epochs

    def _new_sentences(self) -> SentenceProgress:
        models = self.sentence_models
        assert models is not None
        punc_cache = models.punc.new_cache() if models.punc is not None else {}
        return SentenceProgress(SentenceTracker(models.vad.new_cache()), punc_cache)

    def _restore(self, state: HeldSession, msg: RestoreSession) -> list[FromWorker]:
        """Take over from the last snapshot; report what the dead worker computed but never sent.

        The worker sends each stride's result right after its snapshot, so the snapshot is at most that one stride
        ahead of what the API process heard (`msg.tokens`); its last stride's tokens are the ones to send. In 2pass
        and offline mode the sentences decoded after that stride may be unheard too (`SentenceProgress.recent`);
        `msg.sentences` says how many the API process has."""
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
        state.last_tokens = snapshot.last_tokens
        if state.sentences is not None:
            state.sentences = snapshot.sentences
        unreported = snapshot.token_count - len(msg.tokens)
        ahead = state.processed_pos > msg.processed_pos
        unsent = state.sentences.sent - msg.sentences if state.sentences is not None else 0
        recent = len(state.sentences.recent) if state.sentences is not None else 0
        if not (0 <= unreported <= len(snapshot.last_tokens) and (ahead or unreported == 0) and 0 <= unsent <= recent):
            self._drop(msg.session_id)
            return [SessionFailed(msg.session_id, "snapshot does not follow from the tokens already reported")]
        out: list[FromWorker] = []
        if ahead:
            missed = snapshot.last_tokens[len(snapshot.last_tokens) - unreported :]
            state.tokens.extend(missed)
            out.append(StrideDone(msg.session_id, state.processed_pos, tuple(missed), self.model.text(list(missed))))
        if unsent and state.sentences is not None:
            out.extend(state.sentences.recent[len(state.sentences.recent) - unsent :])
        return out

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
        """Something can run now (a decode still on the second pass is not: see `waiting`)."""
        return any(s.next_step(s.ring.write_pos) is not None for s in self.sessions.values()) or self._sentence_work()

    def waiting(self) -> bool:
        """A decode is on the second pass: poll again soon, without spinning (the loop would starve that thread)."""
        return self.second_pass is not None and self.second_pass.busy

    def run_once(self) -> list[FromWorker]:
        """Everything that can run now: every session's step in batches, then the sentence path until it rests."""
        out: list[FromWorker] = []
        pending = self._ready_in_turn()
        for start in range(0, len(pending), self.max_batch):
            out.extend(self._run(pending[start : start + self.max_batch]))
        while self._sentence_work() or self.waiting():
            out.extend(self._run_sentences())
        return out

    def run_batch(self) -> list[FromWorker]:
        """The sentence path's bookkeeping (finished decodes, the VAD over new audio, the next decode), then one batch
        of strides: up to `max_batch` sessions with a stride ready, taken round robin so none starves."""
        out = self._run_sentences() if self.sentence_models is not None else []
        batch = self._ready_in_turn()[: self.max_batch]
        if batch:
            self._turn = batch[-1]
        out.extend(self._run(batch))
        return out

    def _ready_in_turn(self) -> list[str]:
        """Sessions with a step ready, starting after the last one served."""
        return [sid for sid in self._in_turn() if self.sessions[sid].next_step(self.sessions[sid].ring.write_pos) is not None]

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
                samples = pcm_to_float(state.ring.read(state.processed_pos, n))
            except Exception as exc:  # a ring that vanished or was corrupted fails its own session only
                out.append(self._fail(session_id, exc))
                continue
            if state.pipeline.mode.streams and not (is_final and state.sentences is not None):
                work.append((state, n, is_final, samples))
            else:  # no streaming step: offline mode, or a 2pass close (FunASR discards that final step's output)
                out.extend(self._after_step(state, n, is_final, [], samples, 0.0, 0))
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
        for (state, n, is_final, samples), tokens in zip(work, results):
            out.extend(self._after_step(state, n, is_final, tokens, samples, compute_s, len(work)))
        return out

    def _after_step(
        self,
        state: HeldSession,
        n: int,
        is_final: bool,
        tokens: list[str],
        samples: np.ndarray,
        compute_s: float,
        batch_size: int,
    ) -> list[FromWorker]:
        """A stride's snapshot and report, then the sentences that were waiting for it."""
        if state.sentences is None:
            return [self._finish_step(state, n, is_final, tokens, compute_s, batch_size)]
        if is_final:
            # No streaming final step (see the module docstring): the audio is covered, the session ends once its
            # last sentences are out (_run_sentences).
            state.processed_pos += n
            self._save(state)
            return self._due(state)
        return [self._finish_step(state, n, is_final, tokens, compute_s, batch_size), *self._due(state)]

    def _vad(self) -> Vad:
        assert self.sentence_models is not None
        return self.sentence_models.vad

    def _save(self, state: HeldSession) -> float:
        """Snapshot the session's whole state, then release what it no longer needs: until the snapshot covers them,
        a replacement needs those samples. Returns the seconds the snapshot took."""
        saved = time.perf_counter()
        state.snapshots.save(state.processed_pos, len(state.tokens), state.last_tokens, state.cache, state.sentences)
        snapshot_s = time.perf_counter() - saved
        hold = state.processed_pos
        if state.sentences is not None:
            hold = min(hold, state.sentences.tracker.hold())
        state.ring.release(hold)
        return snapshot_s

    def _finish_step(
        self, state: HeldSession, n: int, is_final: bool, tokens: list[str], compute_s: float, batch_size: int
    ) -> FromWorker:
        state.processed_pos += n
        state.tokens.extend(tokens)
        state.last_tokens = tuple(tokens)
        if state.sentences is not None:
            state.sentences.recent.clear()
        snapshot_s = 0.0
        if not is_final:
            # (The final step needs no snapshot: after a crash it is simply run again from the last one.)
            snapshot_s = self._save(state)
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

    # --- sentences (2pass and offline sessions) -------------------------------------------------------------

    def _sentence_work(self) -> bool:
        """The sentence path has something to do now: VAD frames, a decode to start or to apply, a session to end."""
        if self.second_pass is None:
            return False
        if self.second_pass.has_results():
            return True
        idle = not self.second_pass.busy
        for state in self.sessions.values():
            progress = state.sentences
            if progress is None:
                continue
            tracker = progress.tracker
            if self._vad_limit(state) is not None or self._can_end(state):
                return True
            if idle and any(self._key(state, p) not in self._submitted for p in tracker.pending):
                return True
        return False

    def _run_sentences(self) -> list[FromWorker]:
        """1. Apply the decodes the second pass finished; 2. run the VAD over new audio; 3. hand the second pass its
        next batch; 4. end the closed sessions with nothing left."""
        assert self.second_pass is not None
        out: list[FromWorker] = []
        for done in self.second_pass.results():
            out.extend(self._apply(done))
        for session_id in list(self.sessions):
            state = self.sessions.get(session_id)
            if state is not None and state.sentences is not None:
                out.extend(self._advance_vad(state))
        if not self.second_pass.busy:
            out.extend(self._submit())
        for session_id in self._in_turn():
            state = self.sessions[session_id]
            if self._can_end(state):
                out.append(self._end_sentences(state))
        return out

    def _vad_limit(self, state: HeldSession) -> int | None:
        """How far the VAD can run now: whole frames of what is in, or at close everything up to the end."""
        assert state.sentences is not None
        tracker = state.sentences.tracker
        if tracker.finished:
            return None
        closing = state.end_pos is not None and state.ring.write_pos >= state.end_pos
        limit = state.end_pos if closing and state.end_pos is not None else state.ring.write_pos
        if tracker.frames_ready(limit, closing) > 0 or closing:
            return limit
        return None

    def _advance_vad(self, state: HeldSession) -> list[FromWorker]:
        assert state.sentences is not None
        tracker = state.sentences.tracker
        limit = self._vad_limit(state)
        if limit is None:
            return []
        closing = state.end_pos is not None and limit == state.end_pos and state.ring.write_pos >= state.end_pos
        try:
            ready = tracker.frames_ready(limit, closing)
            n = min(ready, VAD_SAMPLES_PER_TURN)
            if n:
                with logs.bound(state.session_id, state.protocol):  # the tracker's lines do not know the session
                    tracker.feed(self._vad(), pcm_to_float(state.ring.read(tracker.vad_pos, n)))
            if closing and n == ready:
                assert state.end_pos is not None
                tracker.finish(state.end_pos)
        except Exception as exc:
            return [self._fail(state.session_id, exc)]
        return []

    @staticmethod
    def _key(state: HeldSession, pending: PendingSentence) -> tuple[str, int, int]:
        return (state.session_id, state.epoch, pending.audio_start)

    def _submit(self) -> list[FromWorker]:
        """Hand the second pass the oldest sentences not yet on it: at most SentenceModels.max_batch, of sessions
        sharing hotwords (SeACo takes one hotword list per call), each session's in order."""
        models = self.sentence_models
        assert models is not None and self.second_pass is not None
        keys: list[tuple[str, int, int]] = []
        audios: list[np.ndarray] = []
        failed: list[FromWorker] = []
        hotwords: str | None = None
        for session_id in self._in_turn():
            state = self.sessions[session_id]
            if state.sentences is None or (hotwords is not None and state.pipeline.hotwords != hotwords):
                continue
            todo = [p for p in state.sentences.tracker.pending if self._key(state, p) not in self._submitted]
            todo = todo[: models.max_batch - len(keys)]
            if not todo:
                continue
            try:
                audios.extend(pcm_to_float(state.ring.read(p.audio_start, p.audio_end - p.audio_start)) for p in todo)
            except Exception as exc:  # a ring that vanished or was corrupted fails its own session only
                del audios[len(keys) :]
                failed.append(self._fail(state.session_id, exc))
                continue
            keys.extend(self._key(state, p) for p in todo)
            hotwords = state.pipeline.hotwords
            if len(keys) >= models.max_batch:
                break
        if keys:
            self._submitted.update(keys)
            self.second_pass.submit(Job(tuple(keys), tuple(audios), hotwords or ""))
        return failed

    def _apply(self, done: Done) -> list[FromWorker]:
        """A finished batch: each sentence of a session still held (in the same incarnation) is punctuated,
        snapshotted, and sent when its stride is out."""
        out: list[FromWorker] = []
        for key, result in zip(done.keys, done.results, strict=True):
            self._submitted.discard(key)
            state = self.sessions.get(key[0])
            if state is None or state.epoch != key[1] or state.sentences is None:
                continue  # aborted, moved or rewound meanwhile: its snapshot still queues the sentence
            pending = state.sentences.tracker.pending
            if not pending or pending[0].audio_start != key[2]:  # pragma: no cover - one job at a time, in order
                out.append(self._fail(state.session_id, RuntimeError("second-pass results out of order")))
                continue
            if isinstance(result, BaseException):
                out.append(self._fail(state.session_id, result))
                continue
            out.extend(self._finish_sentence(state, pending[0], result, done.seconds, len(done.keys)))
        return out

    def _finish_sentence(
        self, state: HeldSession, pending: PendingSentence, result: OfflineResult, offline_s: float, batch_size: int
    ) -> list[FromWorker]:
        """Punctuate a decoded sentence with the session's cache and queue it (unless its text is empty: FunASR's
        server sends nothing for those, and punctuates nothing); snapshot; send what is due."""
        progress = state.sentences
        models = self.sentence_models
        assert progress is not None and models is not None
        started = time.perf_counter()
        text = result.text
        try:
            if text and models.punc is not None:
                text = models.punc.punctuate(text, progress.punc_cache)
        except Exception as exc:
            return [self._fail(state.session_id, exc)]
        progress.tracker.pending.pop(0)
        if text:
            offset_ms = pending.audio_start * 1000 // SAMPLE_RATE
            progress.ready.append(
                SentenceDone(
                    state.session_id,
                    -1,  # numbered when sent
                    text,
                    result.text,
                    tuple(result.tokens),
                    pending.start_ms,
                    pending.end_ms,
                    pending.audio_start,
                    pending.audio_end,
                    tuple((offset_ms + int(a), offset_ms + int(b)) for a, b in result.timestamps),
                    compute_s=offline_s + time.perf_counter() - started,
                    batch_size=batch_size,
                )
            )
        due = self._take_due(state)
        self._save(state)
        return list(due)

    def _due(self, state: HeldSession) -> list[FromWorker]:
        """Send the decoded sentences whose stride is out (snapshot first, as for a stride)."""
        due = self._take_due(state)
        if due:
            self._save(state)
        return list(due)

    @staticmethod
    def _take_due(state: HeldSession) -> list[SentenceDone]:
        """Number and move to `recent` the ready sentences that may go out now: in 2pass, once the partial of the
        stride they ended in is out (`processed_pos` covers their audio); in offline mode (no partials), at once."""
        progress = state.sentences
        assert progress is not None
        due: list[SentenceDone] = []
        offline = not state.pipeline.mode.streams
        while progress.ready and (offline or progress.ready[0].audio_end <= state.processed_pos):
            msg = replace(progress.ready.pop(0), index=progress.sent)
            progress.sent += 1
            progress.recent.append(msg)
            due.append(msg)
        return due

    def _can_end(self, state: HeldSession) -> bool:
        progress = state.sentences
        return (
            progress is not None
            and progress.tracker.finished
            and not progress.tracker.pending
            and not progress.ready
            and state.end_pos is not None
            and state.processed_pos >= state.end_pos
        )

    def _end_sentences(self, state: HeldSession) -> FromWorker:
        """A closed 2pass/offline session whose sentences are all out: its end (the API process joins the text)."""
        msg = StrideDone(state.session_id, state.processed_pos, (), "", final=True, reason=state.close_reason)
        self._drop(state.session_id)
        return msg

    def _in_turn(self) -> list[str]:
        """Every session, starting after the last one served."""
        ids = list(self.sessions)
        if self._turn in self.sessions:
            cut = ids.index(self._turn) + 1
            ids = ids[cut:] + ids[:cut]
        return ids

    def _rewind(self, state: HeldSession) -> None:
        """Put a session back to its last snapshot (a fresh cache if it has none: it had run no stride)."""
        try:
            snapshot = state.snapshots.load()
        except Exception as exc:
            about = logs.about(state.session_id, state.protocol)
            log.error("session %s: snapshot unreadable while rewinding: %s", state.session_id, exc, extra=about)
            self._drop(state.session_id)
            return
        state.epoch = self._next_epoch()  # a decode on the second pass now belongs to the discarded state
        if snapshot is None:
            state.cache = self.model.new_cache(state.options)
            if state.sentences is not None:
                state.sentences = self._new_sentences()
        else:
            state.cache = snapshot.cache
            state.processed_pos = snapshot.processed_pos
            state.last_tokens = snapshot.last_tokens
            del state.tokens[snapshot.token_count :]
            if state.sentences is not None:
                state.sentences = snapshot.sentences

    def _fail(self, session_id: str, exc: BaseException | None) -> FromWorker:
        """One session's failure must not take the worker down."""
        state = self.sessions.get(session_id)
        extra = logs.about(session_id, state.protocol if state is not None else None)
        log.error("session %s failed in inference", session_id, exc_info=exc, extra=extra)
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
