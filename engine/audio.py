"""PCM checks and the streaming resamplers to 16 kHz, run in the API process before audio enters a ring.

The model takes 16 kHz. An 8 kHz session (telephony) is upsampled as it arrives and a 24 kHz one (OpenAI's realtime
audio) is downsampled, each with a stateful polyphase FIR: every output sample depends only on fixed input samples
(zeros before the stream's start), so the result is the same however the client splits its appends, and a REST
session at 24 kHz hears exactly what a realtime WebSocket session fed the same PCM hears.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from engine.errors import InvalidAudio
from engine.units import SAMPLE_RATE

SUPPORTED_SAMPLE_RATES = (8_000, SAMPLE_RATE, 24_000)


class Resampler(Protocol):
    def output_len(self, n: int) -> int:
        """Samples the next `process` of `n` input samples returns (appends check the ring's room first)."""
        ...

    def process(self, pcm: np.ndarray) -> np.ndarray: ...


def resampler_for(sample_rate: int) -> Resampler | None:
    """The resampler a session at `sample_rate` needs on the way in, None at 16 kHz."""
    if sample_rate == 8_000:
        return Upsampler2x()
    if sample_rate == 24_000:
        return Downsampler24k()
    return None


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

    def output_len(self, n: int) -> int:
        return 2 * n

    def process(self, pcm: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._history, pcm.astype(np.float64)])
        even = np.convolve(x, self._even, mode="valid")
        odd = np.convolve(x, self._odd, mode="valid")
        self._history = x[len(x) - len(self._history) :]
        out = np.empty(2 * len(even), dtype=np.float64)
        out[0::2], out[1::2] = even, odd
        return np.clip(np.rint(out), -32768, 32767).astype("<i2")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Downsampler24k:
    """Streaming 24 kHz -> 16 kHz (up 2, low-pass at 8 kHz, down 3), computed only at the kept output phases.

    Output k is the 48 kHz filter output at 3k: the sum over inputs m of h[3k - 2m] * x[m], for 0 <= 3k - 2m < taps.
    After N inputs, outputs 0 .. ceil(2N / 3) - 1 have all their inputs, so a call returns exactly the outputs its
    samples complete; the last `_P` inputs are kept for the next call."""

    def __init__(self, n_taps: int = 72) -> None:
        m = np.arange(n_taps) - (n_taps - 1) / 2
        h = np.sinc(m / 3) * np.hamming(n_taps)  # cut-off 8 kHz at 48 kHz
        self._P = n_taps // 2 + 1  # inputs that can touch one output
        self._h = np.zeros(2 * self._P)
        self._h[:n_taps] = 2 * h / h.sum()  # gain 2 makes up for the zeros stuffed between inputs
        self._history = np.zeros(self._P, dtype=np.float64)
        self._n = 0  # inputs so far

    def output_len(self, n: int) -> int:
        return _ceil_div(2 * (self._n + n), 3) - _ceil_div(2 * self._n, 3)

    def process(self, pcm: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._history, pcm.astype(np.float64)])
        base = self._n - self._P  # stream index of x[0] (negative at the start: the zeros before the stream)
        k = np.arange(_ceil_div(2 * self._n, 3), _ceil_div(2 * (self._n + len(pcm)), 3))
        m = (3 * k // 2)[:, None] - np.arange(self._P)[None, :]  # the inputs of each output, newest first
        out = (self._h[3 * k[:, None] - 2 * m] * x[m - base]).sum(axis=1)
        self._history = x[len(x) - self._P :]
        self._n += len(pcm)
        result: np.ndarray = np.clip(np.rint(out), -32768, 32767).astype("<i2")
        return result
