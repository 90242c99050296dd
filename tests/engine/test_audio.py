"""The streaming resamplers (engine/audio.py): the same output however the audio is split, the length announced
before each call, and a low-pass that keeps speech and drops what 16 kHz cannot hold."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio import Downsampler24k, Resampler, resampler_for


def _tone(freq: float, rate: int, seconds: float, amplitude: float = 8000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")


def _run(resampler: Resampler | None, pcm: np.ndarray, cuts: list[int]) -> np.ndarray:
    assert resampler is not None
    out = []
    for piece in np.split(pcm, cuts):
        expected = resampler.output_len(len(piece))
        got = resampler.process(piece)
        assert len(got) == expected
        out.append(got)
    return np.concatenate(out)


@pytest.mark.parametrize("rate", [8_000, 24_000])
def test_any_split_gives_the_same_output(rate: int) -> None:
    rng = np.random.default_rng(rate)
    pcm = rng.integers(-20000, 20000, rate, dtype=np.int16)
    whole = _run(resampler_for(rate), pcm, [])
    for _ in range(5):
        cuts = sorted(rng.choice(np.arange(1, len(pcm)), size=rng.integers(1, 40), replace=False).tolist())
        assert np.array_equal(_run(resampler_for(rate), pcm, cuts), whole)
    # one sample at a time too
    head = pcm[:300]
    assert np.array_equal(_run(resampler_for(rate), head, list(range(1, 300))), _run(resampler_for(rate), head, []))


def test_24k_keeps_two_thirds_of_the_samples() -> None:
    for n in (1, 2, 3, 4, 5, 24_000, 24_001):
        assert len(Downsampler24k().process(np.zeros(n, dtype=np.int16))) == -(-2 * n // 3)
    assert resampler_for(16_000) is None


def test_24k_passes_speech_and_stops_what_16k_cannot_hold() -> None:
    passed = Downsampler24k().process(_tone(1000, 24_000, 1.0))[200:]
    stopped = Downsampler24k().process(_tone(11_000, 24_000, 1.0))[200:]  # would alias to 5 kHz
    assert 0.95 < np.abs(passed).max() / 8000 < 1.05
    assert np.abs(stopped).max() < 8000 * 0.05
    # the 1 kHz tone comes out at 1 kHz: its spectrum peaks there at 16 kHz
    spectrum = np.abs(np.fft.rfft(passed.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 16_000 / len(passed) - 1000) < 5
