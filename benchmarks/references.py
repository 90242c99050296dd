"""In-process reference transcripts for the benchmark clips, computed in a child process.

The runner itself never imports funasr or holds the model, so it does not compete with the systems under test
for memory; the child is gone before the first trial starts.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _compute(model_dir: str, clips: list[np.ndarray]) -> list[list[str]]:
    import torch

    from benchmarks.audio import to_float32
    from engine.funasr_adapter import load_automodel
    from engine.messages import StreamOptions
    from engine.reference import reference_transcript

    torch.set_num_threads(1)
    automodel = load_automodel(model_dir, ncpu=1)
    return [reference_transcript(automodel, to_float32(clip), StreamOptions())[0] for clip in clips]


def reference_tokens(model_dir: Path, clips: list[np.ndarray]) -> list[list[str]]:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_compute, str(model_dir), clips).result()
