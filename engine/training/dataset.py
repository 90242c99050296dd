"""Training and evaluation sets: synthesised clips turned into the features the model's frontend computes.

Features are FunASR's own: ``WavFrontend`` (the offline twin of the streaming model's ``WavFrontendOnline``)
with the model's frontend settings - 80 mel bins, Hamming window, 25/10 ms frames, LFR 7/6, dither 0 - without
CMVN, which the trainer derives from the training set and writes as ``am.mvn``. Clips are synthesised and
featurised in a process pool; each clip depends only on ``(seed, split, index)``, so the set is the same for
any pool size. A built set is cached as one pickle keyed by those numbers.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.model import factory as model_factory
from engine.training import synth

# The trained model's own frontend settings (dither 0); CMVN is left out here and applied by the trainer.
FRONTEND_CONF: dict[str, Any] = model_factory.model_config("tiny-random")["frontend_conf"]


@dataclass
class ClipSet:
    specs: list[synth.ClipSpec]
    feats: list[np.ndarray] = field(repr=False)  # (frames, 560) float16, before CMVN

    def __len__(self) -> int:
        return len(self.specs)


_frontend: Any = None


def features(pcm: np.ndarray) -> np.ndarray:
    """LFR fbank features (frames, 560) of 16 kHz int16 ``pcm``, as float32, before CMVN."""
    global _frontend
    import torch

    if _frontend is None:
        from funasr.frontends.wav_frontend import WavFrontend

        _frontend = WavFrontend(cmvn_file=None, **FRONTEND_CONF)
    wave = torch.from_numpy(pcm.astype(np.float32) / 32768.0)[None]
    with torch.no_grad():
        feats, _ = _frontend(wave, torch.tensor([wave.shape[1]]))
    out: np.ndarray = feats[0].numpy()
    return out


def _clip(args: tuple[int, str, int]) -> tuple[synth.ClipSpec, np.ndarray]:
    seed, split, index = args
    spec = synth.draw_spec(seed, split, index)
    return spec, features(synth.synthesize(spec)).astype(np.float16)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def build(seed: int, split: str, count: int, cache_dir: Path, processes: int | None = None) -> ClipSet:
    """``count`` clips of ``split`` under ``seed``, from the cache or synthesised now."""
    key = hashlib.sha256(f"{seed}/{split}/{count}/{synth.voice_variants()}".encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"{split}-seed{seed}-{count}-{key}.pkl"
    if path.is_file():
        with path.open("rb") as fh:
            cached: ClipSet = pickle.load(fh)
            return cached
    jobs = [(seed, split, i) for i in range(count)]
    with ProcessPoolExecutor(processes or os.cpu_count() or 1, initializer=_init_worker) as pool:
        pairs = list(pool.map(_clip, jobs, chunksize=32))
    clips = ClipSet([spec for spec, _ in pairs], [feats for _, feats in pairs])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(clips, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.rename(path)
    return clips
