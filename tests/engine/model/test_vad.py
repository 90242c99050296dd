"""engine.model.vad: each VAD call equals FunASR's AutoModel.generate on the same frame, session by session."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.audio import synth_sentences
from engine.model.loading import ModelLoadError, load_automodel
from engine.model.vad import VadModel

FRAME = 960  # 60 ms: the canonical frame
CHUNK_MS = 60


@pytest.fixture(scope="module")
def automodel(vad_model: Path) -> Any:
    return load_automodel(str(vad_model), role="vad")


@pytest.fixture(scope="module")
def vad(vad_model: Path) -> VadModel:
    return VadModel.load(str(vad_model))


def to_float(pcm: np.ndarray) -> np.ndarray:
    """The conversion Parastream uses for int16 PCM."""
    result: np.ndarray = pcm.astype(np.float32) * np.float32(1 / 32768)
    return result


def frames(samples: np.ndarray, size: int = FRAME) -> list[np.ndarray]:
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def feed_all(vad: VadModel, samples: np.ndarray, size: int = FRAME) -> list[list[list[int]]]:
    cache = vad.new_cache()
    return [vad.feed(cache, frame, CHUNK_MS) for frame in frames(samples, size)]


def test_our_float_conversion_is_funasrs_load_bytes_bit_for_bit() -> None:
    from funasr.utils.load_utils import load_bytes

    every = np.arange(-32768, 32768, dtype=np.int16)
    # load_bytes sniffs container headers: start on a sample whose bytes cannot look like one (0x00 0x00).
    every = np.roll(every, -32768)
    assert every[0] == 0
    theirs = load_bytes(every.tobytes())
    ours = to_float(every)
    assert theirs.dtype == ours.dtype == np.float32
    assert np.array_equal(theirs.view(np.uint32), ours.view(np.uint32))


def test_feed_equals_generate_frame_by_frame(automodel: Any, vad: VadModel) -> None:
    pcm = synth_sentences([2.0, 3.0, 1.5], seed=0)
    samples = to_float(pcm)
    ours = feed_all(vad, samples)
    cache: dict[str, Any] = {}
    theirs = [
        automodel.generate(input=frame, cache=cache, is_final=False, chunk_size=CHUNK_MS)[0]["value"]
        for frame in frames(samples)
    ]
    assert ours == theirs
    events = [segment for result in ours for segment in result]
    # The clip has three sentences separated by 1.2 s pauses: three starts and three ends, in order.
    assert [s for s, _ in events if s != -1] == sorted(s for s, _ in events if s != -1)
    assert sum(1 for s, _ in events if s != -1) == 3
    assert sum(1 for _, e in events if e != -1) == 3


def test_odd_frame_sizes_equal_generate(automodel: Any, vad: VadModel) -> None:
    """FunASR keeps what is short of a chunk in the cache; any frame size works the same through both paths."""
    samples = to_float(synth_sentences([1.5], seed=4))
    ours = feed_all(vad, samples, size=700)
    cache: dict[str, Any] = {}
    theirs = [
        automodel.generate(input=frame, cache=cache, is_final=False, chunk_size=CHUNK_MS)[0]["value"]
        for frame in frames(samples, 700)
    ]
    assert ours == theirs


def test_interleaved_sessions_are_independent(vad: VadModel) -> None:
    a = to_float(synth_sentences([1.5, 2.0], seed=1))
    b = to_float(synth_sentences([2.5], seed=2))
    alone_a, alone_b = feed_all(vad, a), feed_all(vad, b)
    cache_a, cache_b = vad.new_cache(), vad.new_cache()
    mixed_a, mixed_b = [], []
    for i in range(max(len(alone_a), len(alone_b))):
        if i * FRAME < len(b):
            mixed_b.append(vad.feed(cache_b, b[i * FRAME : (i + 1) * FRAME], CHUNK_MS))
        if i * FRAME < len(a):
            mixed_a.append(vad.feed(cache_a, a[i * FRAME : (i + 1) * FRAME], CHUNK_MS))
    assert mixed_a == alone_a and mixed_b == alone_b


def test_cache_pickles_mid_sentence(vad: VadModel) -> None:
    """The worker snapshots a session's VAD cache: a pickled and restored cache carries on exactly."""
    samples = to_float(synth_sentences([2.0, 2.0], seed=3))
    whole = feed_all(vad, samples)
    cache = vad.new_cache()
    parts = frames(samples)
    cut = 40  # inside the first sentence
    out = [vad.feed(cache, frame, CHUNK_MS) for frame in parts[:cut]]
    cache = pickle.loads(pickle.dumps(cache))
    out += [vad.feed(cache, frame, CHUNK_MS) for frame in parts[cut:]]
    assert out == whole
    assert vad.cache_nbytes(cache) > 0


def test_max_sentence_ms_cuts_long_speech(vad_model: Path) -> None:
    short = VadModel.load(str(vad_model), max_sentence_ms=1000)
    results = feed_all(short, to_float(synth_sentences([3.0], seed=5)))
    events = [segment for result in results for segment in result]
    ends = [e for _, e in events if e != -1]
    starts = [s for s, _ in events if s != -1]
    assert len(ends) >= 3  # a ~3.2 s segment in pieces of at most 1 s
    assert all(end - start <= 1000 + 20 for start, end in zip(starts, ends))


def test_rejects_int16_frames(vad: VadModel) -> None:
    with pytest.raises(TypeError):
        vad.feed(vad.new_cache(), np.zeros(FRAME, dtype=np.int16), CHUNK_MS)


def test_load_errors_name_the_vad_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="PARASTREAM_VAD_MODEL"):
        VadModel.load(str(tmp_path / "missing"))
    (tmp_path / "config.yaml").write_text("model: FsmnVADStreaming\n", encoding="utf-8")
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="PARASTREAM_VAD_MODEL.*missing am.mvn"):
        VadModel.load(str(tmp_path))


def test_a_streaming_model_is_not_a_vad(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="PARASTREAM_VAD_MODEL.*ParaformerStreaming"):
        load_automodel(str(tiny_model_dir), role="vad")
