"""PCM checks and the 8 kHz -> 16 kHz streaming resampler, done in the API process before audio enters a ring.

The model takes 16 kHz. An 8 kHz session is upsampled as it arrives, with a stateful polyphase FIR: each output
sample depends only on fixed input samples, so the result is the same however the client splits its appends.
"""

from __future__ import annotations

import numpy as np

from engine.errors import InvalidAudio
from engine.units import SAMPLE_RATE

SUPPORTED_SAMPLE_RATES = (8_000, SAMPLE_RATE)


def check_pcm(body: bytes) -> int:
    """Number of int16 samples in `body`; refuses what is not whole little-endian 16-bit samples."""
    if not body:
        raise InvalidAudio("empty audio body: send at least one 16-bit sample")
    if len(body) % 2:
        raise InvalidAudio(
            f"audio body has {len(body)} bytes, an odd count: expected little-endian 16-bit mono PCM",
            bytes=len(body),
        )
    return len(body) // 2


def _halfband_taps(n_taps: int = 31) -> np.ndarray:
    """Windowed-sinc low-pass at 4 kHz for a 16 kHz output, scaled by 2 to make up for zero stuffing."""
    m = np.arange(n_taps) - (n_taps - 1) / 2
    h = np.sinc(m / 2) * np.hamming(n_taps)
    taps: np.ndarray = 2 * h / h.sum()
    return taps


class Upsampler2x:
    """Streaming 2x interpolator (8 kHz int16 in, 16 kHz int16 out); `len(out) == 2 * len(in)` for every call."""

    def __init__(self, n_taps: int = 31) -> None:
        taps = _halfband_taps(n_taps)
        self._even = taps[0::2]  # phase producing output 2n
        # phase producing output 2n + 1, padded to the same length so both phases share one history
        self._odd = np.pad(taps[1::2], (0, len(self._even) - len(taps[1::2])))
        self._history = np.zeros(len(self._even) - 1, dtype=np.float64)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._history, pcm.astype(np.float64)])
        even = np.convolve(x, self._even, mode="valid")
        odd = np.convolve(x, self._odd, mode="valid")
        self._history = x[len(x) - len(self._history) :]
        out = np.empty(2 * len(even), dtype=np.float64)
        out[0::2], out[1::2] = even, odd
        return np.clip(np.rint(out), -32768, 32767).astype("<i2")
