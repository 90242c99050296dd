"""The offline model's forward passes, on a thread of the worker that yields the core to the streaming model.

Why a thread, at a lower priority, on any core: a large offline decode takes as long as several strides (a 5 s
sentence on large-random: ~0.7 s; a 15 s one: ~1.8 s), and one forward pass cannot be interrupted. Run in the worker's
loop, it held every stride of that worker for that long (measured: docs/pipeline.md). On its own thread:
- at nice PRIORITY (5: a weight of 335 against the loop's 1024), the kernel gives a core mostly to the strides of a
  worker's loop (nice 0), and to the decode when they leave it time. Measured on large-random, 2 cores, at 1 and 2
  streams (one run each, noisy): at nice 19 the decodes starved behind the loops, the API process and the load
  generator, and so did a session whose next stride waits for its sentence (sentence p95 1.75 / 2.05 s); at nice 0
  strides lost their head start (partial p95 404 / 814 ms); nice 5 gave 235 / 414 ms partials and 0.94 / 1.56 s
  sentences, nice 10 297 / 701 ms and 1.43 / 1.88 s.
- on every core the service may use, not only its worker's: a decode then runs on whichever core is idle (a lone
  stream's sentence is decoded on the other core while its worker goes on striding), and yields it to that core's
  own worker when it has strides.
torch releases the GIL inside its operators, so the thread and the loop interleave; the thread holds the GIL at most
one switch interval (5 ms) at a time.

The thread touches only what it is given: the sentences' audio (copied out of the rings by the loop), the hotwords,
and the offline model, which nothing else uses. The loop applies results (punctuation, snapshot, report) itself, so
session state has one writer.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

PRIORITY = 5  # nice value of the thread (Linux sets nice per thread, by its thread id): see the module docstring


class OfflineResult(Protocol):
    @property
    def tokens(self) -> Sequence[str]: ...

    @property
    def text(self) -> str: ...

    @property
    def timestamps(self) -> Sequence[Sequence[int]]: ...  # per token [start, end], ms from the decoded audio's start


class OfflineDecoder(Protocol):
    """`engine.model.offline.OfflineModel`: one forward pass over sentences that share hotwords."""

    def decode(self, audios: list[np.ndarray], hotwords: str) -> Sequence[OfflineResult]: ...


@dataclass(frozen=True)
class Job:
    """A batch of sentences sharing hotwords. `keys` identify each sentence to the caller."""

    keys: tuple[Any, ...]
    audios: tuple[np.ndarray, ...]
    hotwords: str


@dataclass(frozen=True)
class Done:
    """Each sentence's result, or the exception that decoding it (alone, after the batch failed) raised."""

    keys: tuple[Any, ...]
    results: tuple[OfflineResult | BaseException, ...]
    seconds: float  # the forward pass's wall time (shared by the batch)


class SecondPass:
    """One job at a time on a daemon thread; `threaded=False` runs each job at once in the caller (tests)."""

    def __init__(self, decoder: OfflineDecoder, threaded: bool = True, cpus: tuple[int, ...] = ()) -> None:
        self.decoder = decoder
        self.threaded = threaded
        self.cpus = cpus  # the cores the thread may run on (empty: its worker's)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Done] = queue.SimpleQueue()
        self._in_flight = 0
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._in_flight > 0

    def has_results(self) -> bool:
        return not self._done.empty()

    def submit(self, job: Job) -> None:
        self._in_flight += 1
        if not self.threaded:
            self._done.put(self._run(job))
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="second-pass", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def results(self) -> list[Done]:
        """What finished since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        self._in_flight -= len(out)
        return out

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)

    def _serve(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PRIORITY)
            if self.cpus:
                os.sched_setaffinity(0, self.cpus)  # 0: this thread
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            log.warning("could not set the second pass's priority or cores: sentences compete with strides")
        while (job := self._jobs.get()) is not None:
            self._done.put(self._run(job))

    def _run(self, job: Job) -> Done:
        import time

        started = time.perf_counter()
        try:
            results: tuple[OfflineResult | BaseException, ...] = tuple(
                self.decoder.decode(list(job.audios), job.hotwords)
            )
        except Exception:
            if len(job.audios) == 1:
                return Done(job.keys, (_exception(),), time.perf_counter() - started)
            # One sentence broke the batch: decode each on its own, so the one that fails again fails alone.
            log.exception("an offline batch of %d failed; decoding its sentences one by one", len(job.audios))
            each: list[OfflineResult | BaseException] = []
            for audio in job.audios:
                try:
                    each.append(self.decoder.decode([audio], job.hotwords)[0])
                except Exception as exc:
                    each.append(exc)
            results = tuple(each)
        return Done(job.keys, results, time.perf_counter() - started)


def _exception() -> BaseException:
    import sys

    exc = sys.exc_info()[1]
    assert exc is not None
    return exc
