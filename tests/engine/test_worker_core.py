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
    from engine.funasr_adapter import StreamingModel

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
