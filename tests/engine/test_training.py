"""The demo model's data and training scripts: deterministic synthesis over the documented range, the two funasr
traps handled in our loop, and a training run that repeats itself bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.training import synth
from engine.training.cer import cer, edit_distance


@pytest.fixture(autouse=True, scope="module")
def _espeak() -> None:
    assert synth.espeak_available(), "espeak-ng is missing: `make system-deps` installs it"


def test_specs_are_drawn_per_clip_and_split_over_the_documented_range() -> None:
    specs = [synth.draw_spec(0, "train", i) for i in range(600)]
    assert specs[17] == synth.draw_spec(0, "train", 17)  # a clip depends only on (seed, split, index)
    assert specs[17] != synth.draw_spec(0, "eval", 17) != synth.draw_spec(1, "train", 17)
    lengths = {len(s.text) for s in specs}
    assert min(lengths) == synth.MIN_DIGITS and max(lengths) == synth.MAX_DIGITS
    assert set("".join(s.text for s in specs)) == set(synth.DIGITS)
    assert all(synth.SPEED_WPM[0] <= s.speed <= synth.SPEED_WPM[1] for s in specs)
    assert all(synth.PITCH[0] <= s.pitch <= synth.PITCH[1] for s in specs)
    assert all(synth.GAIN_DB[0] <= s.gain_db <= synth.GAIN_DB[1] for s in specs)
    assert all(0 <= s.lead_s <= 1 and 0 <= s.trail_s <= 1 for s in specs)
    noisy = [s for s in specs if s.snr_db is not None]
    assert 0.4 < len(noisy) / len(specs) < 0.6
    assert not any(s.zero_silence for s in noisy)
    assert any(s.zero_silence for s in specs)
    assert len({s.variant for s in specs}) > 0.9 * (len(synth.voice_variants()) + 1)


def test_pinyin_reads_every_digit_with_its_tone() -> None:
    assert synth.to_pinyin("零一二三四五六七八九") == "ling2 yi1 er4 san1 si4 wu3 liu4 qi1 ba1 jiu3"


def test_synthesis_is_deterministic_and_applies_silence_and_noise() -> None:
    quiet = synth.ClipSpec("三一四", "", 160, 50, 0, 0.0, None, 0.5, 0.5, True, 1)
    pcm = synth.synthesize(quiet)
    assert pcm.dtype == np.int16 and np.array_equal(pcm, synth.synthesize(quiet))
    assert not pcm[:8000].any() and not pcm[-8000:].any()  # 0.5 s of exact zeros at each end
    assert np.abs(pcm).max() > 3000  # speech in between
    floor = synth.synthesize(synth.ClipSpec("三一四", "", 160, 50, 0, 0.0, None, 0.5, 0.5, False, 1))
    assert floor[:8000].any() and np.abs(floor[:8000]).max() < 100  # a faint floor, not zeros
    louder = synth.synthesize(synth.ClipSpec("三一四", "", 160, 50, 0, 6.0, None, 0.5, 0.5, True, 1))
    assert 1.8 < np.abs(louder).astype(float).sum() / np.abs(pcm).astype(float).sum() < 2.1  # +6 dB
    noisy = synth.synthesize(synth.ClipSpec("三一四", "whisper", 160, 50, 0, 0.0, 10.0, 0.5, 0.5, False, 1))
    assert noisy[:8000].std() > 20 * floor[:8000].std()


def test_cer_counts_substitutions_insertions_and_deletions() -> None:
    assert edit_distance("三一四", "三一四") == 0
    assert edit_distance("三一四", "三四") == 1
    assert edit_distance("三一四", "三一一四") == 1
    assert edit_distance("三一四", "五一六") == 2
    assert cer([("三一四", "三四"), ("五", "五五")]) == pytest.approx(2 / 4)


# ---------------------------------------------------------------------------------------------- training


def _tiny_set(tmp_path: Path, count: int = 12) -> Any:
    from engine.training import dataset

    return dataset.build(5, "train", count, tmp_path / "cache", processes=1)


def test_the_chunk_config_reaches_the_encoder_with_the_stream_start_zero_frames(tmp_path: Path) -> None:
    """Trap 1: ParaformerStreaming.forward draws a chunk config that Paraformer.encode drops. Trap 2: streaming
    inference puts chunk_size[0] + chunk_size[2] zero frames before the first chunk, after the position encoding."""
    import torch

    from engine.model import model_dir
    from engine.training import train

    clips = _tiny_set(tmp_path, 4)
    model = model_dir.instantiate(train.digits_config(), len(train.TOKENS), 0)
    model.train()
    shift, rescale = train.cmvn_of(clips)
    batch = train.collate(clips, [0, 1, 2, 3], shift, rescale)
    seen: list[tuple[int, int, int]] = []
    encoder = model.encoder
    original_forward = encoder.forward

    def spy(xs_pad: torch.Tensor, ilens: torch.Tensor, *args: Any, ind: int = 0, **kwargs: Any) -> Any:
        embedded = encoder.embed(xs_pad.clone())
        zeros = int((embedded[:, :10].abs().sum(-1) == 0).all(0).sum())
        seen.append((ind, int(ilens.max() - xs_pad.shape[1]), zeros))
        return original_forward(xs_pad, ilens, *args, ind=ind, **kwargs)

    encoder.forward = spy
    chunks = encoder.overlap_chunk_cls
    for ind in (0, 1):
        chunks.random_choice = lambda training=True, decoding_ind=None, ind=ind: ind
        loss, _ = train.streaming_loss(model, *[t.clone() for t in batch])
        assert torch.isfinite(loss)
    lead = [chunks.chunk_size[i] - chunks.stride[i] for i in (0, 1)]
    assert lead == [4, 5]  # [0, 8, 4] and [0, 10, 5]: the look-ahead frames a new stream's cache holds
    assert seen == [(0, lead[0], lead[0]), (1, lead[1], lead[1])]
    assert encoder.embed.__class__.__name__ == "StreamSinusoidalPositionEncoder"  # restored after the call


def test_training_repeats_bit_for_bit_and_writes_a_model_funasr_streams_with(tmp_path: Path) -> None:
    from engine.training import train

    clips = _tiny_set(tmp_path)
    cfg = train.TrainConfig(seed=3, epochs=2, max_frames=400, warmup_steps=2, threads=1)
    first = train.train(clips, tmp_path / "a", cfg, log=lambda *_: None)
    second = train.train(clips, tmp_path / "b", cfg, log=lambda *_: None)
    assert first["history"] == second["history"] and first["steps"] >= 4

    def digest(d: Path) -> list[str]:
        return [hashlib.sha256((d / n).read_bytes()).hexdigest() for n in ("config.yaml", "model.pt", "tokens.json", "am.mvn")]

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    # The mvn is the training set's: the normalised features have mean 0 and deviation 1 per dimension.
    feats = np.concatenate([f.astype(np.float64) for f in clips.feats])
    shift, rescale = train.cmvn_of(clips)
    normalised = (feats + shift) * rescale
    assert np.allclose(normalised.mean(0), 0, atol=1e-4) and np.allclose(normalised.std(0), 1, atol=1e-3)
    # FunASR loads what was written and runs its streaming loop over it (two clips; the text is untrained).
    value, hyps = train.streaming_cer(tmp_path / "a", [(s.text, synth.synthesize(s)) for s in clips.specs[:2]], threads=1)
    assert value >= 0 and len(hyps) == 2 and all(set(h) <= set(synth.DIGITS) for h in hyps)
