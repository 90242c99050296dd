"""Audio sources the SDK streams: a file, a numpy array, bytes, or an (async) iterable of PCM frames.

Everything becomes little-endian 16-bit mono PCM frames (`bytes`) at one sample rate, the session's:

- a path (`str` or `os.PathLike`) to anything libsndfile reads (WAV, FLAC, OGG, ...): mixed to mono and resampled
  (soxr) to the requested rate, 16 kHz by default;
- a numpy array: int16 samples as they are; a float array is taken as [-1, 1] and scaled; a 2-D array is
  (samples, channels) and mixed to mono;
- `bytes` (or `bytearray`, `memoryview`): raw PCM16 LE;
- an iterable or async iterable of frames, each `bytes` or a numpy array as above, of any size (a frame with an odd
  byte count keeps its last byte for the next one). A blocking iterable (a microphone, stdin) is read in a thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from app.audio_file import decode_audio, float_to_int16

DEFAULT_SAMPLE_RATE = 16_000
# The rates a session takes (docs/api.md; engine/audio.py's SUPPORTED_SAMPLE_RATES, not imported: the client side
# loads no engine module). The service resamples to 16 kHz on arrival.
SAMPLE_RATES = (8_000, 16_000, 24_000)

Frame: TypeAlias = bytes | bytearray | memoryview | npt.NDArray[Any]
AudioSource: TypeAlias = (
    str
    | os.PathLike[str]
    | bytes
    | bytearray
    | memoryview
    | npt.NDArray[Any]
    | Iterable[bytes | npt.NDArray[Any]]
    | AsyncIterable[bytes | npt.NDArray[Any]]
)


def load_audio(path: str | os.PathLike[str], sample_rate: int = DEFAULT_SAMPLE_RATE) -> npt.NDArray[np.int16]:
    """The file's audio as int16 mono samples at `sample_rate`, decoded as the service decodes an upload
    (app/audio_file.py: channels averaged, soxr); a file it cannot read raises UndecodableAudio (a ValueError)."""
    with open(path, "rb") as file:
        return decode_audio(file, sample_rate)


def pcm_bytes(frame: Frame) -> bytes:
    """One frame as PCM16 LE bytes."""
    if isinstance(frame, np.ndarray):
        array = frame
        if array.ndim == 2:
            array = array.mean(axis=1) if array.shape[1] > 1 else array[:, 0]
        elif array.ndim != 1:
            raise ValueError(f"audio arrays are 1-D (samples) or 2-D (samples, channels), not {array.shape}")
        if np.issubdtype(array.dtype, np.floating):
            array = float_to_int16(array)
        elif array.dtype != np.int16:
            array = np.clip(array, -32768, 32767)
        return array.astype("<i2", copy=False).tobytes()
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return bytes(frame)
    raise TypeError(f"an audio frame is bytes or a numpy array, not {type(frame).__name__}")


def is_path(source: object) -> bool:
    return isinstance(source, (str, os.PathLike))


def open_source(
    source: AudioSource, sample_rate: int = DEFAULT_SAMPLE_RATE, piece_samples: int = DEFAULT_SAMPLE_RATE
) -> AsyncIterator[bytes]:
    """`source` as an async iterator of PCM16 LE frames at `sample_rate`: a whole file, array or bytes in pieces of
    `piece_samples`, an iterable frame by frame (odd bytes carried over). A file is read here, so a missing or
    unreadable one raises before anything is sent."""
    if is_path(source):
        return _pieces(pcm_bytes(load_audio(Path(source), sample_rate)), piece_samples)  # type: ignore[arg-type]
    if isinstance(source, (bytes, bytearray, memoryview, np.ndarray)):
        return _pieces(pcm_bytes(source), piece_samples)
    if isinstance(source, AsyncIterable):
        return _even(source)
    if isinstance(source, Iterable):
        return _even(_in_thread(source))
    raise TypeError(f"cannot stream a {type(source).__name__}: give a path, an array, bytes or an iterable of frames")


async def _pieces(pcm: bytes, piece_samples: int) -> AsyncIterator[bytes]:
    if len(pcm) % 2:
        raise ValueError("PCM16 audio has an even number of bytes")
    step = max(1, piece_samples) * 2
    for start in range(0, len(pcm), step):
        yield pcm[start : start + step]


async def _even(frames: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    carry = b""
    async for frame in frames:
        data = carry + pcm_bytes(frame)
        cut = len(data) - len(data) % 2
        carry = data[cut:]
        if cut:
            yield data[:cut]
    if carry:
        raise ValueError("the audio frames ended with half a sample (an odd number of bytes in all)")


async def _in_thread(frames: Iterable[Any]) -> AsyncIterator[Any]:
    """A plain iterable's items; each `next` runs in a thread unless it is a list or tuple (never blocks)."""
    if isinstance(frames, (list, tuple)):
        for frame in frames:
            yield frame
        return
    iterator: Iterator[Any] = iter(frames)
    done = object()
    while (frame := await asyncio.to_thread(next, iterator, done)) is not done:
        yield frame
