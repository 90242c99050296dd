"""The worker core's batching: which strides go together, when to wait, and what a failed batch costs.

Runs `WorkerCore` in-process on the real tiny-random model (the model-level equality of batched and unbatched
strides is tests/engine/model/test_batched_step.py). Transcripts are compared with FunASR's own `generate()` loop.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.messages import AbortSession, CloseSession, OpenSession, SessionFailed, StreamOptions, StrideDone
from engine.model.adapter import StreamingModel
from engine.ring import RingWriter
from engine.worker.core import WorkerCore
from tests.audio import synth_speechlike
from tests.reference_cache import reference_tokens

STRIDE = StreamOptions().stride_samples


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> StreamingModel:
    return StreamingModel.load(str(tiny_model_dir))


def open_session(core: WorkerCore, rings, sid: str) -> RingWriter:  # noqa: ANN001
    ring = rings()
    assert core.open(OpenSession(sid, ring.name, StreamOptions())) == []
    return ring


def test_sessions_opening_and_closing_between_batches_match_reference(model, rings, tiny_model_dir) -> None:  # noqa: ANN001
    """8 sessions of different lengths join at different times, close at different times, one is aborted mid-way;
    batches of at most 3 are cut round robin, so each batch mixes ages, finals and new sessions."""
    core = WorkerCore(model, max_batch=3)
    rng = random.Random(11)
    lengths = [STRIDE * 6 + 700, STRIDE * 2, STRIDE * 5 + 4000, 500, STRIDE * 3 + 9599, STRIDE * 7, STRIDE + 960, STRIDE * 4]
    clips = {f"s{i}": synth_speechlike(n / 16000, seed=120 + i) for i, n in enumerate(lengths)}
    joins = {sid: i // 2 for i, sid in enumerate(clips)}  # two new sessions every round
    writers: dict[str, RingWriter] = {}
    sent = {sid: 0 for sid in clips}
    got: dict[str, list[str]] = {sid: [] for sid in clips}
    finished: set[str] = set()
    batch_sizes: list[int] = []
    aborted = "s6"
    for round_ in range(200):
        for sid, clip in clips.items():
            if joins[sid] == round_:
                writers[sid] = open_session(core, rings, sid)
            if sid in writers and sent[sid] < len(clip):
                n = rng.choice([1600, 4800, 9600, 12000])
                writers[sid].write(clip[sent[sid] : sent[sid] + n].tobytes())
                sent[sid] += n
                if sent[sid] >= len(clip):
                    core.close(CloseSession(sid, writers[sid].write_pos))
        if round_ == 3 and aborted in core.sessions:
            core.abort(AbortSession(aborted))
            finished.add(aborted)
        for _ in range(rng.choice([1, 1, 2])):
            msgs = core.run_batch()
            if msgs:
                batch_sizes.append(len(msgs))
            for msg in msgs:
                assert isinstance(msg, StrideDone), msg
                assert msg.batch_size == len(msgs)
                got[msg.session_id].extend(msg.tokens)
                if msg.final:
                    finished.add(msg.session_id)
        if len(finished) == len(clips):
            break
    assert finished == set(clips) and core.sessions == {}
    assert max(batch_sizes) == 3 and core.batches < core.strides
    for sid, clip in clips.items():
        if sid != aborted:
            assert got[sid] == reference_tokens(tiny_model_dir, clip), sid


def test_batches_take_turns_so_no_session_starves(model, rings) -> None:  # noqa: ANN001
    core = WorkerCore(model, max_batch=2)
    writers = {sid: open_session(core, rings, sid) for sid in "abcde"}
    for sid, ring in writers.items():
        ring.write(synth_speechlike(STRIDE * 2 / 16000, seed=ord(sid)).tobytes())
    served: list[set[str]] = [{m.session_id for m in core.run_batch()} for _ in range(5)]
    assert [len(s) for s in served] == [2, 2, 2, 2, 2]
    first_round = served[0] | served[1] | served[2]
    assert first_round == set("abcde")  # everybody's first stride before anybody's second
    core.drop_all()


POISON = 12345  # a stride whose first sample is this (int16) breaks inference in the wrapper below


def poisoned(samples: np.ndarray) -> bool:
    return bool(samples.size) and samples[0] == np.float32(POISON / 32768)


class Exploding:
    """Wraps the model so that a poisoned stride breaks inference: alone, `step` raises; in a batch, `step_batch`
    first advances every cache in the batch and then raises, which is the worst case for the other sessions."""

    def __init__(self, model: StreamingModel) -> None:
        self.model = model
        self.batch_failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def step(self, cache: dict, samples: np.ndarray, is_final: bool, opts: StreamOptions) -> list[str]:
        if poisoned(samples):
            raise RuntimeError("poisoned stride")
        return self.model.step(cache, samples, is_final, opts)

    def step_batch(self, requests: list) -> list[list[str]]:
        results = self.model.step_batch(requests)
        if any(poisoned(samples) for _, samples, *_ in requests):
            self.batch_failures += 1
            raise RuntimeError("a batch with a poisoned stride")
        return results


def test_a_failing_batch_rewinds_to_snapshots_and_fails_only_the_bad_session(model, rings, tiny_model_dir) -> None:  # noqa: ANN001
    wrapped = Exploding(model)
    core = WorkerCore(wrapped, max_batch=4)  # type: ignore[arg-type]
    clips = {sid: synth_speechlike((STRIDE * 4 + 2000) / 16000, seed=200 + i) for i, sid in enumerate("abcd")}
    clips["c"][STRIDE * 2] = POISON  # c's third stride breaks inference
    writers = {sid: open_session(core, rings, sid) for sid in clips}
    got: dict[str, list[str]] = {sid: [] for sid in clips}
    failed: list[str] = []
    for sid, ring in writers.items():
        ring.write(clips[sid].tobytes())
        core.close(CloseSession(sid, ring.write_pos))
    while core.sessions:
        for msg in core.run_batch():
            if isinstance(msg, SessionFailed):
                failed.append(msg.session_id)
            else:
                got[msg.session_id].extend(msg.tokens)
    assert wrapped.batch_failures == 1 and core.batches >= 4
    assert failed == ["c"]
    for sid, clip in clips.items():
        if sid != "c":
            assert got[sid] == reference_tokens(tiny_model_dir, clip), sid
