"""engine.model.precision: the opt-in int8 matmuls.

Batched int8 strides are checked against unbatched ones in test_batched_step.py (the `int8` case); here: the layer
itself, and that the served int8 path equals FunASR's own loop running the same int8 model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.funasr_loop import reference_transcript
from engine.model.adapter import StreamingModel, StreamOptions
from engine.model.loading import load_automodel
from engine.model.precision import RowInt8Linear, set_precision
from tests.audio import synth_speechlike, to_float32


def test_a_rows_output_does_not_depend_on_the_other_rows_in_its_batch() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 512)
    int8 = RowInt8Linear(linear)
    quiet = torch.randn(1, 15, 256)
    loud = torch.randn(3, 15, 256) * 100  # per-tensor dynamic quantisation would coarsen `quiet` next to these
    alone = int8(quiet)
    batched = int8(torch.cat((loud[:2], quiet, loud[2:])))[2:3]
    assert torch.equal(alone, batched)
    exact = linear(quiet)
    relative = ((alone - exact).norm() / exact.norm()).item()
    assert 0 < relative < 0.03, relative  # quantised (not a float copy), and close


def test_every_linear_is_converted_and_fp32_is_left_alone(model_dir: Path) -> None:
    automodel = load_automodel(str(model_dir))
    linears = sum(type(m) is nn.Linear for m in automodel.model.modules())
    assert set_precision(automodel.model, "fp32") == 0
    assert set_precision(automodel.model, "int8") == linears > 0
    assert not any(type(m) is nn.Linear for m in automodel.model.modules())
    with pytest.raises(ValueError, match="precision must be one of"):
        set_precision(automodel.model, "int4")


def test_served_int8_equals_funasrs_loop_on_the_same_int8_model(model_dir: Path) -> None:
    """The worker's path (StreamingModel.step) on an int8 model gives FunASR's own generate() loop's tokens on an
    independently loaded and converted copy: the conversion is deterministic and the path is unchanged."""
    served = StreamingModel.load(str(model_dir), precision="int8")
    reference = load_automodel(str(model_dir))
    set_precision(reference.model, "int8")
    opts = StreamOptions()
    differs_from_fp32 = 0
    fp32 = load_automodel(str(model_dir))
    for seed, seconds in ((5, 3.35), (6, 4.8)):
        samples = to_float32(synth_speechlike(seconds, seed=seed))
        want, _ = reference_transcript(reference, samples, opts)
        cache, got = served.new_cache(opts), []
        stride = opts.stride_samples
        full = len(samples) // stride
        for i in range(full):
            got += served.step(cache, samples[i * stride : (i + 1) * stride], False, opts)
        got += served.step(cache, samples[full * stride :], True, opts)
        assert got == want, seed
        differs_from_fp32 += reference_transcript(fp32, samples, opts)[0] != want
    print(f"int8 transcripts differing from fp32 (random weights, tiny margins): {differs_from_fp32} of 2")
