"""Audio files as uploaded to OpenAI's transcription endpoint, made into what a session takes: 16 kHz mono int16.

libsndfile (through soundfile) reads the container, whatever its rate, sample format and channel count: WAV, FLAC,
OGG (Vorbis, Opus), MP3 where the installed libsndfile has it (1.1 and later), AIFF, CAF... The channels are averaged
to mono and soxr resamples to 16 kHz. A 16 kHz mono 16-bit WAV comes out as exactly its own samples (libsndfile's
int16 -> float is a division by 32768, undone here), so a client can compare with a session fed the raw PCM.

A file libsndfile cannot read (MP4/M4A, WebM, text, a truncated header) is `UndecodableAudio`, which the endpoint
answers with 415. Tests and clients decode with `decode_audio` too, to feed a REST session what the endpoint heard.
"""

from __future__ import annotations

from typing import IO, Any

import numpy as np
import numpy.typing as npt
import soundfile  # type: ignore[import-untyped]
import soxr

FORMATS = "WAV, FLAC, OGG (Vorbis, Opus), MP3, AIFF"


class UndecodableAudio(ValueError):
    """The bytes are no audio file libsndfile reads; the message says what libsndfile said."""


def decode_audio(file: IO[bytes], sample_rate: int) -> npt.NDArray[np.int16]:
    """The file's audio as int16 mono samples at `sample_rate`: channels averaged, resampled with soxr (HQ)."""
    try:
        data, rate = soundfile.read(file, dtype="float32", always_2d=True)
    except (RuntimeError, TypeError, ValueError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        why = getattr(exc, "error_string", None) or str(exc)  # libsndfile's own words, without the object's repr
        raise UndecodableAudio(
            f"could not decode the file as audio: {why} ({FORMATS} are read; MP4/M4A and WebM are not)"
        ) from exc
    mono: npt.NDArray[Any] = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate and len(mono):
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return float_to_int16(mono)


def float_to_int16(samples: npt.NDArray[Any]) -> npt.NDArray[np.int16]:
    """[-1, 1] floats to int16: the inverse of libsndfile's int16 -> float, so int16 files round-trip exactly."""
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * 32768.0)
    result: npt.NDArray[np.int16] = np.clip(scaled, -32768, 32767).astype(np.int16)
    return result
