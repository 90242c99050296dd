"""The worker's in-process core against the real (tiny-random) model: no processes, no sockets."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from engine.messages import AbortSession, CloseSession, OpenSession, SessionFailed, StreamOptions, StrideDone
from engine.worker.core import WorkerCore
from tests.audio import synth_speechlike
from tests.reference_cache import reference_tokens


@pytest.fixture(scope="module")
def core(tiny_model_dir: Path) -> WorkerCore:
    from engine.model.adapter import StreamingModel

    return WorkerCore(StreamingModel.load(str(tiny_model_dir)))


def _drive(core: WorkerCore, clips: dict[str, np.ndarray], rings, seed: int) -> dict[str, list[str]]:  # noqa: ANN001
    """Feed each session's ring in random splits, stepping the core between writes; close at the end."""
    rng = random.Random(seed)
    writers, pos, tokens, finished = {}, {}, {}, set()
    for sid in clips:
        writers[sid] = rings()
        core.open(OpenSession(sid, writers[sid].name, StreamOptions()))
        pos[sid], tokens[sid] = 0, []
    while len(finished) < len(clips):
        for sid, clip in clips.items():
            if pos[sid] < len(clip):
                n = rng.randint(1, 32000)
                writers[sid].write(clip[pos[sid] : pos[sid] + n].tobytes())
                pos[sid] += n
                if pos[sid] >= len(clip):
                    core.close(CloseSession(sid, writers[sid].write_pos))
        if rng.random() < 0.7:
            for msg in core.run_once():
                assert isinstance(msg, StrideDone), msg
                tokens[msg.session_id].extend(msg.tokens)
                if msg.final:
                    finished.add(msg.session_id)
    return tokens


def test_interleaved_sessions_match_reference(core: WorkerCore, rings, tiny_model_dir: Path) -> None:  # noqa: ANN001
    lengths = [9600 * 4, 9600 * 3 + 100, 9600 * 5 + 4000, 700, 0 + 9600]
    clips = {f"s{i}": synth_speechlike(n / 16000, seed=40 + i) for i, n in enumerate(lengths)}
    got = _drive(core, clips, rings, seed=1)
    for sid, clip in clips.items():
        assert got[sid] == reference_tokens(tiny_model_dir, clip), sid
    assert core.sessions == {}  # every cache dropped after its final step


def test_final_step_waits_for_audio_up_to_end_pos(core: WorkerCore, rings) -> None:  # noqa: ANN001
    ring = rings()
    core.open(OpenSession("late", ring.name, StreamOptions()))
    core.close(CloseSession("late", end_pos=12000))  # close names audio not yet in the ring
    ring.write(synth_speechlike(0.5, seed=2).tobytes())  # 8000 samples
    assert core.run_once() == []
    ring.write(synth_speechlike(0.25, seed=3).tobytes())  # now 12000
    msgs = core.run_once()  # one full stride
    assert len(msgs) == 1 and not msgs[0].final and msgs[0].processed_pos == 9600
    msgs = core.run_once()
    assert len(msgs) == 1 and msgs[0].final and msgs[0].processed_pos == 12000


def test_abort_drops_cache_and_missing_ring_fails_alone(core: WorkerCore, rings) -> None:  # noqa: ANN001
    ring = rings()
    core.open(OpenSession("a", ring.name, StreamOptions()))
    ring.write(synth_speechlike(1.0, seed=4).tobytes())
    core.run_once()
    assert core.cache_bytes() > 0
    core.abort(AbortSession("a"))
    assert core.sessions == {} and core.cache_bytes() == 0
    replies = core.open(OpenSession("b", "parastream_1_deadbeef", StreamOptions()))
    assert len(replies) == 1 and isinstance(replies[0], SessionFailed)
    assert core.sessions == {}


def _stride_then_die(core: WorkerCore, ring, sid: str, strides: int) -> tuple[list[str], int, tuple[str, ...]]:  # noqa: ANN001
    """Run `strides` strides; the last one's result is 'lost' (its worker died between snapshot and send).
    Returns the tokens heard, the position heard up to, and the lost stride's tokens."""
    heard: list[str] = []
    processed, lost = 0, ()
    for i in range(strides):
        (msg,) = core.run_once()
        assert isinstance(msg, StrideDone) and msg.text == core.model.text(list(msg.tokens))  # the stride's own text
        if i == strides - 1:
            lost = msg.tokens
        else:
            heard.extend(msg.tokens)
            processed = msg.processed_pos
    core.abort(AbortSession(sid))  # the dead worker's handles (abort does not unlink: the API process owns them)
    return heard, processed, lost


def test_restore_sends_the_stride_the_dead_worker_never_reported(core: WorkerCore, rings, tiny_model_dir: Path) -> None:  # noqa: ANN001
    from engine.messages import RestoreSession

    clip = synth_speechlike(4.0, seed=31)  # 6 strides and a remainder
    ring = rings()
    ring.write(clip.tobytes())
    core.open(OpenSession("r", ring.name, StreamOptions()))
    heard, processed, lost = _stride_then_die(core, ring, "r", strides=4)
    assert lost, "pick a clip whose 4th stride has tokens"
    replacement = WorkerCore(core.model)
    (missed,) = replacement.open(RestoreSession("r", ring.name, StreamOptions(), processed, tuple(heard)))
    assert isinstance(missed, StrideDone) and missed.tokens == lost and missed.processed_pos == 4 * 9600
    replacement.close(CloseSession("r", ring.write_pos))
    tokens = heard + list(lost)
    while replacement.sessions:
        for msg in replacement.run_once():
            tokens.extend(msg.tokens)
            final = msg
    want = reference_tokens(tiny_model_dir, clip)
    assert tokens == want
    assert final.final and final.transcript == core.model.text(want)  # the whole text, once, on the final


def test_restore_refuses_a_snapshot_that_does_not_follow_what_was_heard(core: WorkerCore, rings) -> None:  # noqa: ANN001
    from engine.messages import RestoreSession

    ring = rings()
    ring.write(synth_speechlike(4.0, seed=31).tobytes())
    core.open(OpenSession("x", ring.name, StreamOptions()))
    heard, processed, _ = _stride_then_die(core, ring, "x", strides=4)
    # The API process claims to have heard less than the snapshot can make up for: failing beats a wrong transcript.
    replies = WorkerCore(core.model).open(RestoreSession("x", ring.name, StreamOptions(), processed, tuple(heard[:-1])))
    assert len(replies) == 1 and isinstance(replies[0], SessionFailed) and "does not follow" in replies[0].message
