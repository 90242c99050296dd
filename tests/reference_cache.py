"""In-process reference transcripts (FunASR's own generate() loop), computed once per clip and model."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from engine.messages import StreamOptions


@functools.lru_cache(maxsize=4)
def _automodel(model_dir: str):  # noqa: ANN202 - a FunASR AutoModel
    from engine.model.loading import load_automodel

    return load_automodel(model_dir)


def reference_tokens(model_dir: Path, pcm: np.ndarray, options: StreamOptions = StreamOptions()) -> list[str]:
    from benchmarks.funasr_loop import reference_transcript
    from tests.audio import to_float32

    tokens, _text = reference_transcript(_automodel(str(model_dir)), to_float32(pcm), options)
    return tokens
