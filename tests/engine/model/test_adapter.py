"""engine.model.adapter: per-stride stepping must equal FunASR's own streaming loop token for token."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.funasr_loop import reference_transcript
from engine.model.adapter import StreamingModel, StreamOptions
from engine.model.loading import ModelLoadError, find_cached_hub_model, hub_reachable, load_automodel
from tests.audio import synth_speechlike, to_float32

OPTS = StreamOptions()
STRIDE = OPTS.stride_samples


@pytest.fixture(scope="module")
def automodel(tiny_model_dir: Path) -> Any:
    return load_automodel(str(tiny_model_dir), ncpu=1)


@pytest.fixture(scope="module")
def streaming(tiny_model_dir: Path) -> StreamingModel:
    # A model of its own: StreamingModel installs our position encoder on the model it serves, and the reference
    # (`automodel`) must keep running FunASR's own modules.
    return StreamingModel(load_automodel(str(tiny_model_dir), ncpu=1))


def test_the_reference_keeps_funasrs_own_position_encoder(automodel: Any, streaming: StreamingModel) -> None:
    from funasr.models.transformer.embedding import StreamSinusoidalPositionEncoder

    from engine.model.position_encoding import StridePositionEncoder

    assert type(automodel.model.encoder.embed) is StreamSinusoidalPositionEncoder
    assert type(streaming.model.encoder.embed) is StridePositionEncoder


def clip(n_samples: int, seed: int) -> np.ndarray:
    return to_float32(synth_speechlike(n_samples / 16000, seed=seed))[:n_samples]


def stream_steps(model: StreamingModel, samples: np.ndarray, opts: StreamOptions = OPTS) -> list[str]:
    """What a worker does: full strides non-final, then one final step with the remainder."""
    cache = model.new_cache(opts)
    stride = opts.stride_samples
    full = len(samples) // stride
    tokens: list[str] = []
    for i in range(full):
        tokens += model.step(cache, samples[i * stride : (i + 1) * stride], False, opts)
    tokens += model.step(cache, samples[full * stride :], True, opts)
    return tokens


def test_stride_samples() -> None:
    assert STRIDE == 9600
    assert StreamOptions(chunk_size=(0, 8, 4)).stride_samples == 7680


@pytest.mark.parametrize(
    "n_samples",
    [
        0,  # no audio at all: a single final tail-chunk step
        500,  # shorter than 960: never featurized (tail-chunk path)
        3000,  # short, final step featurized
        STRIDE,  # exact multiple: full stride, then an empty final step
        3 * STRIDE,
        3 * STRIDE + 700,  # remainder < 960 -> tail-chunk path, the 700 samples are dropped (FunASR)
        3 * STRIDE + 5000,  # remainder >= 960 -> featurized with is_final
        5 * 16000 + 123,
        12 * STRIDE + 1,
    ],
)
def test_steps_match_funasr_loop(automodel: Any, streaming: StreamingModel, n_samples: int) -> None:
    samples = clip(n_samples, seed=n_samples)
    ref_tokens, ref_text = reference_transcript(automodel, samples, OPTS)
    tokens = stream_steps(streaming, samples)
    assert tokens == ref_tokens
    assert streaming.text(tokens) == ref_text
    if n_samples >= 2 * 16000:
        assert len(tokens) >= 10  # the random model emits a healthy number of tokens on speech-like audio


def test_different_audio_gives_different_transcripts(streaming: StreamingModel) -> None:
    transcripts = {tuple(stream_steps(streaming, clip(4 * 16000, seed))) for seed in range(4)}
    assert len(transcripts) == 4


def test_reference_is_independent_of_feed_size(automodel: Any, streaming: StreamingModel) -> None:
    """The stride contract holds for any client chunking: FunASR buffers partial strides itself."""
    samples = clip(4 * 16000 + 4321, seed=11)
    expected = stream_steps(streaming, samples)
    for piece in (1600, 7000, 12345):
        captured = []
        cache: dict[str, Any] = {}
        starts = list(range(0, len(samples), piece))
        for index, start in enumerate(starts):
            result = automodel.generate(
                input=samples[start : start + piece],
                cache=cache,
                is_final=index == len(starts) - 1,
                chunk_size=list(OPTS.chunk_size),
                encoder_chunk_look_back=OPTS.encoder_chunk_look_back,
                decoder_chunk_look_back=OPTS.decoder_chunk_look_back,
            )
            captured.append(result[0]["text"])
        assert "".join(captured) == streaming.text(expected), piece


def test_interleaved_caches_are_independent(streaming: StreamingModel) -> None:
    a, b = clip(3 * STRIDE + 2500, seed=21), clip(5 * STRIDE + 300, seed=22)
    separate_a, separate_b = stream_steps(streaming, a), stream_steps(streaming, b)

    cache_a, cache_b = streaming.new_cache(OPTS), streaming.new_cache(OPTS)
    out_a: list[str] = []
    out_b: list[str] = []
    for i in range(5):  # alternate strides between the two sessions; a finishes first
        if i < 3:
            out_a += streaming.step(cache_a, a[i * STRIDE : (i + 1) * STRIDE], False, OPTS)
        elif i == 3:
            out_a += streaming.step(cache_a, a[3 * STRIDE :], True, OPTS)
        out_b += streaming.step(cache_b, b[i * STRIDE : (i + 1) * STRIDE], False, OPTS)
    out_b += streaming.step(cache_b, b[5 * STRIDE :], True, OPTS)

    assert out_a == separate_a and out_b == separate_b
    assert separate_a != separate_b


def test_threads_sharing_one_model_get_their_own_results(streaming: StreamingModel) -> None:
    """The design point: private kwargs per call, so sessions in threads cannot see each other's cache."""
    clips = [clip(3 * STRIDE + 1000 * i, seed=40 + i) for i in range(4)]
    expected = [stream_steps(streaming, c) for c in clips]
    got: list[list[str] | None] = [None] * len(clips)

    def run(i: int) -> None:
        got[i] = stream_steps(streaming, clips[i])

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, to interleave inside steps
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clips))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old)
    assert got == expected


def test_final_step_resets_cache_and_cache_size_is_reported(streaming: StreamingModel) -> None:
    cache = streaming.new_cache(OPTS)
    fresh = streaming.cache_nbytes(cache)
    samples = clip(6 * STRIDE, seed=5)
    for i in range(6):
        streaming.step(cache, samples[i * STRIDE : (i + 1) * STRIDE], False, OPTS)
    grown = streaming.cache_nbytes(cache)
    assert grown > fresh > 0
    streaming.step(cache, None, True, OPTS)
    assert cache["encoder"]["start_idx"] == 0 and cache["encoder"]["opt"] is None
    assert streaming.cache_nbytes(cache) == fresh


def test_step_rejects_wrong_sizes_and_dtypes(streaming: StreamingModel) -> None:
    cache = streaming.new_cache(OPTS)
    with pytest.raises(ValueError):
        streaming.step(cache, np.zeros(STRIDE - 1, np.float32), False, OPTS)
    with pytest.raises(ValueError):
        streaming.step(cache, np.zeros(STRIDE, np.float32), True, OPTS)
    with pytest.raises(TypeError):
        streaming.step(cache, np.zeros(STRIDE, np.int16), False, OPTS)


def test_dither_is_forced_to_zero(automodel: Any) -> None:
    from funasr.utils.load_utils import extract_fbank

    frontend = automodel.kwargs["frontend"]
    assert frontend.dither == 0.0
    # Digital silence is where dither matters most (log of ~0 energy vs log of noise energy).
    audio = np.concatenate([np.zeros(4800, np.float32), clip(4800, seed=1)])

    def feats() -> torch.Tensor:
        out, _ = extract_fbank([torch.from_numpy(audio.copy())], frontend=frontend, cache={}, is_final=False)
        return out

    assert torch.equal(feats(), feats())
    frontend.dither = 1.0  # control: the check above would catch a live dither
    try:
        assert not torch.equal(feats(), feats())
    finally:
        frontend.dither = 0.0


def test_reference_restores_generate_chunk(automodel: Any) -> None:
    reference_transcript(automodel, clip(STRIDE, seed=2), OPTS)
    assert "generate_chunk" not in automodel.model.__dict__


def test_to_cpu_keeps_results(automodel: Any, tiny_model_dir: Path) -> None:
    model = StreamingModel(load_automodel(str(tiny_model_dir), ncpu=1)).to("cpu")
    samples = clip(2 * STRIDE + 1234, seed=9)
    assert model.device == "cpu"
    assert stream_steps(model, samples) == reference_transcript(automodel, samples, OPTS)[0]


def test_missing_local_dir_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="PARASTREAM_MODEL") as info:
        load_automodel(str(tmp_path / "no-such-model"))
    assert "does not exist" in str(info.value)


def test_incomplete_local_dir_raises_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: ParaformerStreaming\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="model.pt"):
        load_automodel(str(tmp_path))


@pytest.mark.skipif(
    find_cached_hub_model("paraformer-zh-streaming") is not None,
    reason="the real model is in the local ModelScope cache, so loading it by name succeeds offline",
)
def test_hub_name_offline_fails_fast_with_advice() -> None:
    if hub_reachable():
        pytest.skip("the ModelScope hub is reachable: this would download the real model")
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_automodel("paraformer-zh-streaming")
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "PARASTREAM_MODEL" in message
    assert "could not be reached" in message
    assert "make-model tiny-random" in message and "config.yaml" in message
    assert elapsed < 8.0  # FunASR + ModelScope on their own take about 22 s to give up
