"""engine.model.onnx_encoder: the encoder exported with its caches, on ONNX Runtime (PARASTREAM_BACKEND=onnx).

Batched onnx strides against FunASR's own batch-1 path are in test_batched_step.py (the `onnx` case); here: the
artefact's build-once cache, and a lone session's tokens against FunASR's generate() loop.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.model import onnx_encoder
from engine.model.adapter import StreamingModel, StreamOptions, load_automodel
from tests.audio import synth_speechlike, to_float32
from tests.reference_cache import reference_tokens


def test_the_artefact_is_built_once_per_model_content(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir, ignore=shutil.ignore_patterns(".parastream"))
    encoder = load_automodel(str(model_dir)).model.encoder
    first = onnx_encoder.artefact(encoder, model_dir)
    assert first.parent == model_dir / ".parastream" and first.stat().st_size > 0
    built_at = first.stat().st_mtime_ns
    assert onnx_encoder.artefact(encoder, model_dir) == first and first.stat().st_mtime_ns == built_at  # reused
    with open(model_dir / "model.pt", "ab") as f:  # a changed model (any byte) gets its own artefact
        f.write(b"\0")
    assert onnx_encoder.artefact(encoder, model_dir) != first


def test_an_unwritable_model_dir_builds_into_the_user_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir, ignore=shutil.ignore_patterns(".parastream"))
    (model_dir / ".parastream").write_bytes(b"")  # a file where the folder would go: mkdir fails, as read-only would
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = onnx_encoder.artefact(load_automodel(str(model_dir)).model.encoder, model_dir)
    assert path.is_relative_to(tmp_path / "cache" / "parastream" / "artefacts") and path.is_file()


def test_a_lone_session_on_onnx_equals_funasrs_loop(model_dir: Path) -> None:
    model = StreamingModel.load(str(model_dir), backend="onnx")
    assert model.encoder_artefact is not None
    opts, stride = StreamOptions(), StreamOptions().stride_samples
    for seed, seconds in ((5, 3.35), (6, 4.8), (7, 0.03)):
        pcm = synth_speechlike(seconds, seed=seed)
        samples, cache, got = to_float32(pcm), model.new_cache(opts), []
        full = len(samples) // stride
        for i in range(full):
            got += model.step(cache, samples[i * stride : (i + 1) * stride], False, opts)
        got += model.step(cache, samples[full * stride :], True, opts)
        assert got == reference_tokens(model_dir, pcm), seed


def test_onnx_refuses_int8_with_the_setting_named(model_dir: Path) -> None:
    from engine.model.adapter import ModelLoadError

    with pytest.raises(ModelLoadError, match="PARASTREAM_BACKEND=onnx runs fp32"):
        StreamingModel.load(str(model_dir), backend="onnx", precision="int8")
