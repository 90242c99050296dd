"""In-process reference transcripts for the benchmark clips, computed in a child process.

The runner itself never imports funasr or holds the model, so it does not compete with the systems under test
for memory; the child is gone before the first trial starts.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _compute(model_dir: str, clips: list[np.ndarray], precision: str, look_back: tuple[int, int]) -> list[list[str]]:
    import torch

    from benchmarks.audio import to_float32
    from benchmarks.funasr_loop import reference_transcript
    from engine.messages import StreamOptions
    from engine.model.adapter import load_automodel
    from engine.model.precision import set_precision

    torch.set_num_threads(1)
    automodel = load_automodel(model_dir, ncpu=1)
    set_precision(automodel.model, precision)  # FunASR's loop on the same int8 model the system serves
    opts = StreamOptions(encoder_chunk_look_back=look_back[0], decoder_chunk_look_back=look_back[1])
    return [reference_transcript(automodel, to_float32(clip), opts)[0] for clip in clips]


def reference_tokens(
    model_dir: Path, clips: list[np.ndarray], precision: str = "fp32", look_back: tuple[int, int] = (4, 1)
) -> list[list[str]]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_compute, str(model_dir), clips, precision, look_back).result()
