"""Deterministic speech-like audio for tests and benchmarks (no recordings are available offline)."""

from __future__ import annotations

import numpy as np


def synth_speechlike(seconds: float, seed: int, sample_rate: int = 16000) -> np.ndarray:
    """``seconds`` of int16 mono audio that varies like speech: seeded "syllables" of 80-300 ms.

    Each syllable is a few harmonics of a gliding pitch (90-300 Hz) under a raised-cosine envelope,
    separated by short pauses, with a little noise throughout. Different seeds give different signals,
    and hence different random-model transcripts; the same seed always gives the same samples.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    out = np.zeros(n, dtype=np.float64)
    pos = 0
    while pos < n:
        pos += int(rng.uniform(0.02, 0.15) * sample_rate)  # pause before the syllable
        length = min(int(rng.uniform(0.08, 0.30) * sample_rate), n - pos)
        if length <= 0:
            break
        t = np.arange(length) / sample_rate
        f0 = rng.uniform(90, 300) * (1 + rng.uniform(-0.3, 0.3) * t / max(t[-1], 1e-9))  # pitch glide
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        weights = rng.uniform(0.1, 1.0, 6) / np.arange(1, 7)  # a seeded "vowel" colour per syllable
        tone = sum(w * np.sin((k + 1) * phase) for k, w in enumerate(weights))
        envelope = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / max(length - 1, 1))
        out[pos : pos + length] += rng.uniform(0.2, 0.6) * envelope * tone / weights.sum()
        pos += length
    out += rng.normal(0.0, 0.01, n)
    return np.clip(np.round(out * 32767), -32768, 32767).astype(np.int16)


def to_float32(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1), the scaling FunASR expects for numpy input."""
    return (samples.astype(np.float32) / 32768.0).astype(np.float32)
