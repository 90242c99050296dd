"""The sentence path in the worker, with stand-in models (tests/engine/worker/fakes.py): FunASR's bookkeeping on
positions, the order of a session's events, batching across sessions, and a restore mid-sentence."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.messages import (
    CloseSession,
    FromWorker,
    Mode,
    OpenSession,
    PipelineOptions,
    RestoreSession,
    SentenceDone,
    StreamOptions,
    StrideDone,
)
from engine.ring import RingWriter
from engine.worker.core import SentenceModels, WorkerCore
from engine.worker.sentences import SentenceTracker
from tests.audio import synth_speechlike
from tests.engine.worker.fakes import CountingPunctuator, EnergyVad, HashDecoder, funasr_sentences
from tests.reference_cache import reference_tokens


def sentences_clip(seconds: list[float], seed: int, pause_s: float = 0.8) -> np.ndarray:
    """Speech-like stretches separated by quiet pauses, with a quiet lead-in."""
    parts = [np.zeros(int(0.5 * 16000), dtype=np.int16)]
    for i, length in enumerate(seconds):
        parts.append(synth_speechlike(length, seed=seed * 100 + i))
        parts.append(np.zeros(int(pause_s * 16000), dtype=np.int16))
    return np.concatenate(parts)


CLIPS = {
    "three": ([1.2, 2.0, 0.9], 1),
    "cut-by-close": ([1.5, 1.1], 2),
    "tail": ([0.7, 1.6, 1.3, 0.8], 3),
}


@pytest.mark.parametrize("name", list(CLIPS))
def test_tracker_follows_funasr_bookkeeping(name: str) -> None:
    seconds, seed = CLIPS[name]
    pcm = sentences_clip(seconds, seed)
    if name == "cut-by-close":
        pcm = pcm[: len(pcm) - int(0.75 * 16000)]  # the close lands inside the last sentence
    if name == "tail":
        pcm = pcm[: len(pcm) - 333]  # a last frame shorter than 60 ms
    expected = funasr_sentences(EnergyVad(), pcm)
    assert len(expected) >= 2

    vad = EnergyVad()
    tracker = SentenceTracker(vad.new_cache())
    audio = pcm.astype(np.float32) / 32768
    for pos in range(0, len(pcm) - len(pcm) % 9600, 9600):  # the worker feeds whole strides
        tracker.feed(vad, audio[pos : pos + 9600])
    tracker.feed(vad, audio[tracker.vad_pos :])  # the close: the rest, its tail frame included
    tracker.finish(len(pcm))
    got = [(p.audio_start, p.audio_end, p.start_ms, p.end_ms) for p in tracker.pending]
    end_ms = len(pcm) * 1000 // 16000
    assert got == [(a, b, s, end_ms if e == -1 else e) for a, b, s, e in expected]


# --- the core ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def streaming(tiny_model_dir: Path) -> Any:
    from engine.model.adapter import StreamingModel

    return StreamingModel.load(str(tiny_model_dir))


def make_core(
    streaming: Any, decoder: HashDecoder | None = None, max_batch: int = 4, threaded: bool = False
) -> WorkerCore:
    models = SentenceModels(EnergyVad(), decoder or HashDecoder(), CountingPunctuator(), max_batch=max_batch)
    return WorkerCore(streaming, max_batch=max_batch, sentence_models=models, threaded_second_pass=threaded)


def comparable(msg: FromWorker) -> tuple[object, ...]:
    """A message without its timings and batch size (those depend on the load, nothing else may)."""
    if isinstance(msg, StrideDone):
        return ("stride", msg.processed_pos, msg.tokens, msg.final)
    if isinstance(msg, SentenceDone):
        return ("sentence", msg.index, msg.text, msg.tokens, msg.start_ms, msg.end_ms, msg.audio_start, msg.audio_end)
    return (type(msg).__name__, getattr(msg, "message", ""))


def makes_event(msg: FromWorker) -> bool:
    return not (isinstance(msg, StrideDone) and not msg.tokens and not msg.final)


def drive(
    core: WorkerCore,
    clips: dict[str, tuple[np.ndarray, PipelineOptions]],
    rings: Callable[[], RingWriter],
    seed: int,
    stop_after: int | None = None,
) -> tuple[dict[str, list[FromWorker]], dict[str, RingWriter]]:
    """Write each clip in random splits, stepping the core between writes, and close at the end. With `stop_after`,
    stop once that many messages came out (the rest of the last step's messages are lost, as in a crash)."""
    rng = random.Random(seed)
    writers = {sid: rings() for sid in clips}
    got: dict[str, list[FromWorker]] = {sid: [] for sid in clips}
    pos = dict.fromkeys(clips, 0)
    for sid, (_, pipeline) in clips.items():
        core.open(OpenSession(sid, writers[sid].name, StreamOptions(), pipeline))
    done: set[str] = set()
    count = 0
    while len(done) < len(clips):
        for sid, (pcm, _) in clips.items():
            if pos[sid] < len(pcm):
                n = min(rng.randint(1, 24000), writers[sid].free)
                writers[sid].write(pcm[pos[sid] : pos[sid] + n].tobytes())
                pos[sid] += n
                if pos[sid] >= len(pcm):
                    core.close(CloseSession(sid, writers[sid].write_pos))
        for msg in core.run_batch():
            if stop_after is not None and count >= stop_after:
                return got, writers
            count += 1
            sid = msg.session_id  # type: ignore[union-attr]
            got[sid].append(msg)
            if isinstance(msg, StrideDone) and msg.final:
                done.add(sid)
    return got, writers


def test_2pass_events_follow_the_audio_alone(streaming: Any, rings: Callable[[], RingWriter], tiny_model_dir: Path) -> None:
    clips = {
        "a": (sentences_clip([1.2, 2.0, 0.9], 1), PipelineOptions(Mode.TWO_PASS)),
        "b": (sentences_clip([1.5, 1.1], 2), PipelineOptions(Mode.TWO_PASS, "一 丁")),
        "c": (sentences_clip([0.7, 1.6], 3), PipelineOptions(Mode.OFFLINE)),
    }
    runs = [
        drive(make_core(streaming, max_batch=b, threaded=t), clips, rings, seed=s)[0]
        for b, s, t in ((1, 1, False), (4, 2, True), (16, 3, False))  # the second pass on its thread, or inline
    ]
    for sid, (pcm, pipeline) in clips.items():
        # What becomes an event (a stride without tokens makes none) comes in one order however the audio was split
        # and batched: the event ids do not depend on the load.
        sequences = [[comparable(m) for m in run[sid] if makes_event(m)] for run in runs]
        assert sequences[0] == sequences[1] == sequences[2], sid

        msgs = runs[0][sid]
        assert isinstance(msgs[-1], StrideDone) and msgs[-1].final
        sentences = [m for m in msgs if isinstance(m, SentenceDone)]
        expected = funasr_sentences(EnergyVad(), pcm)
        assert [(s.audio_start, s.audio_end) for s in sentences] == [(a, b) for a, b, _, _ in expected]
        assert [s.index for s in sentences] == list(range(len(expected)))
        assert [s.text.rsplit("。", 1)[1] for s in sentences] == [str(i + 1) for i in range(len(expected))]
        decoded = HashDecoder().decode([pcm[a:b].astype(np.float32) / 32768 for a, b, _, _ in expected], pipeline.hotwords)
        assert [list(s.tokens) for s in sentences] == [d.tokens for d in decoded]
        partial_tokens = [t for m in msgs if isinstance(m, StrideDone) for t in m.tokens]
        if pipeline.mode is Mode.OFFLINE:
            assert partial_tokens == []
        else:
            # 2pass partials are online mode's, except the final step's, which FunASR's 2pass server discards too.
            online = reference_tokens(tiny_model_dir, pcm)
            assert partial_tokens and online[: len(partial_tokens)] == partial_tokens


def test_sentences_of_sessions_sharing_hotwords_share_a_pass(streaming: Any, rings: Callable[[], RingWriter]) -> None:
    pcm = sentences_clip([1.0], 5)
    decoder = HashDecoder()
    core = make_core(streaming, decoder, max_batch=8)
    writers = {}
    for sid, hotwords in (("x", ""), ("y", ""), ("z", "一")):
        writers[sid] = rings()
        core.open(OpenSession(sid, writers[sid].name, StreamOptions(), PipelineOptions(Mode.OFFLINE, hotwords)))
        writers[sid].write(pcm.tobytes())
    msgs = []
    while core.has_work():
        msgs += core.run_batch()
    assert sorted(decoder.calls) == [1, 2]
    sentences = [m for m in msgs if isinstance(m, SentenceDone)]
    assert {m.session_id for m in sentences} == {"x", "y", "z"}
    for sid in "xyz":
        core.close(CloseSession(sid, writers[sid].write_pos))
    while core.has_work():
        core.run_batch()
    assert core.sessions == {}


def test_ring_is_held_from_the_sentence_start(streaming: Any, rings: Callable[[], RingWriter]) -> None:
    quiet = np.zeros(4 * 16000, dtype=np.int16)  # longer than the 3 s of pre-roll kept before a start
    pcm = np.concatenate([quiet, sentences_clip([3.0], 6, pause_s=0.2)[: int(2.8 * 16000)]])  # still in speech
    core = make_core(streaming)
    ring = rings()
    core.open(OpenSession("s", ring.name, StreamOptions(), PipelineOptions(Mode.TWO_PASS)))
    ring.write(pcm.tobytes())
    while core.has_work():
        core.run_batch()
    tracker = core.sessions["s"].sentences.tracker  # type: ignore[union-attr]
    assert tracker.speech_start is not None
    assert 0 < ring.read_pos <= tracker.speech_start < core.sessions["s"].processed_pos
    core.drop_all()


@pytest.mark.parametrize("stop_after", [3, 6, 9, 12])
def test_restore_mid_sentence_gives_the_same_messages(
    streaming: Any, rings: Callable[[], RingWriter], stop_after: int
) -> None:
    clips = {"s": (sentences_clip([1.2, 2.0, 0.9, 1.4], 7), PipelineOptions(Mode.TWO_PASS))}
    whole, _ = drive(make_core(streaming), clips, rings, seed=4)

    crashed = make_core(streaming)
    heard, writers = drive(crashed, clips, rings, seed=4, stop_after=stop_after)
    crashed.drop_all()  # the worker dies: its handles go, the ring and the snapshot stay
    pcm = clips["s"][0]
    ring = writers["s"]
    if ring.write_pos < len(pcm):
        ring.write(pcm[ring.write_pos :].tobytes())
    strides = [m for m in heard["s"] if isinstance(m, StrideDone)]
    replacement = make_core(streaming)
    out = replacement.open(
        RestoreSession(
            "s",
            ring.name,
            StreamOptions(),
            strides[-1].processed_pos if strides else 0,
            tuple(t for m in strides for t in m.tokens),
            end_pos=len(pcm),
            pipeline=clips["s"][1],
            sentences=sum(isinstance(m, SentenceDone) for m in heard["s"]),
        )
    )
    while replacement.has_work():
        out += replacement.run_batch()
    resumed = [comparable(m) for m in heard["s"] + out if makes_event(m)]
    assert resumed == [comparable(m) for m in whole["s"] if makes_event(m)]
