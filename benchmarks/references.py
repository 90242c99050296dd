"""In-process reference transcripts for the benchmark clips, computed in a child process.

The runner itself never imports funasr or holds the model, so it does not compete with the systems under test
for memory; the child is gone before the first trial starts. One child computes every (precision, look-back)
asked for: importing funasr there costs more than a reference of a short clip.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

Key = tuple[str, tuple[int, int]]  # (precision, (encoder, decoder) look-back)


def _compute(model_dir: str, clips: list[np.ndarray], keys: list[Key]) -> list[list[list[str]]]:
    import torch

    from benchmarks.audio import to_float32
    from benchmarks.funasr_loop import reference_transcript
    from engine.messages import StreamOptions
    from engine.model.adapter import load_automodel
    from engine.model.precision import set_precision

    torch.set_num_threads(1)
    out = []
    for precision, look_back in keys:
        automodel = load_automodel(model_dir, ncpu=1)  # afresh for each: set_precision changes it in place
        set_precision(automodel.model, precision)  # FunASR's loop on the same int8 model the system serves
        opts = StreamOptions(encoder_chunk_look_back=look_back[0], decoder_chunk_look_back=look_back[1])
        out.append([reference_transcript(automodel, to_float32(clip), opts)[0] for clip in clips])
    return out


def references(model_dir: Path, clips: list[np.ndarray], keys: Sequence[Key]) -> dict[Key, list[list[str]]]:
    """Each clip's tokens from FunASR's own loop, for every (precision, look-back) in `keys`."""
    keys = list(dict.fromkeys(keys))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        tokens = pool.submit(_compute, str(model_dir), clips, keys).result()
    return dict(zip(keys, tokens))


def reference_tokens(
    model_dir: Path, clips: list[np.ndarray], precision: str = "fp32", look_back: tuple[int, int] = (4, 1)
) -> list[list[str]]:
    return references(model_dir, clips, [(precision, look_back)])[(precision, look_back)]
