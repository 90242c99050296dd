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


def synth_sentences(
    sentence_seconds: list[float],
    pause_s: float = 1.2,
    seed: int = 0,
    sample_rate: int = 16000,
    lead_s: float = 0.5,
) -> np.ndarray:
    """int16 "sentences" of :func:`synth_speechlike` audio separated by near-silent pauses.

    The clip is ``lead_s`` of near silence, then for each entry of ``sentence_seconds`` a sentence that long
    followed by ``pause_s`` of near silence (after the last one too, so that a VAD can close it). Near silence is
    Gaussian noise at -60 dBFS (synth_speechlike's own background is -40 dBFS). The default 1.2 s pause is longer
    than the VAD's 800 ms end silence, so each sentence ends its own segment; :func:`sentence_bounds` gives the
    nominal (start, end) of each sentence in seconds. Sentence ``i`` uses seed ``seed * 1000 + i``.
    """
    rng = np.random.default_rng([seed, 0x5E7])
    pieces = [_near_silence(lead_s, rng, sample_rate)]
    for i, seconds in enumerate(sentence_seconds):
        pieces.append(synth_speechlike(seconds, seed * 1000 + i, sample_rate).astype(np.float64) / 32767)
        pieces.append(_near_silence(pause_s, rng, sample_rate))
    out = np.concatenate(pieces)
    return np.clip(np.round(out * 32767), -32768, 32767).astype(np.int16)


def sentence_bounds(
    sentence_seconds: list[float], pause_s: float = 1.2, lead_s: float = 0.5
) -> list[tuple[float, float]]:
    """The nominal (start, end) in seconds of each sentence of :func:`synth_sentences` with the same arguments.

    A sentence's first syllable starts 20-150 ms after its nominal start, and its last one may end a little before
    its nominal end (synth_speechlike's seeded pauses).
    """
    bounds = []
    t = lead_s
    for seconds in sentence_seconds:
        bounds.append((t, t + seconds))
        t += seconds + pause_s
    return bounds


def _near_silence(seconds: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    result: np.ndarray = rng.normal(0.0, 0.001, int(round(seconds * sample_rate)))
    return result
