"""Where a session's sentences begin and end: FunASR's 2pass server loop, on ring positions instead of byte frames.

FunASR's classic Python 2pass server (`runtime/python/websocket/funasr_wss_server.py`, `ws_serve`) decides what a
sentence is with a few lines of bookkeeping around its streaming VAD. Serving its sentences exactly means following
those lines, and this class does, one for one, with ring positions standing in for its lists of byte frames (so no
audio is copied until a sentence is decoded):

| FunASR's loop                                     | here                                                       |
|---------------------------------------------------|------------------------------------------------------------|
| client frames, 1920 bytes from the Python client  | 60 ms frames cut from the session's start, whatever the    |
|                                                   | HTTP split (the last one: what is left at close)           |
| `frames.append(message)`                          | `vad_pos` advances; `frames` is [frames_start, vad_pos)    |
| `vad_pre_idx += len(message) // 32`               | `vad_ms`                                                   |
| VAD `generate(chunk_size=60, is_final=False)`     | `vad.feed(cache, frame, 60)`, once per frame               |
| a result read only if it has exactly one segment  | the same                                                   |
| start: `frames_asr = frames[-beg_bias:]` with     | `speech_start` = the position `beg_bias` frames back,      |
| `beg_bias = (vad_pre_idx - start) // frame_ms`    | `frames[-0:]` (all) included                               |
| later frames appended to `frames_asr` first       | the sentence runs to the end of the frame the end is in    |
| end: decode `frames_asr`, then `frames[-20:]`     | queue [speech_start, frame end); keep 20 frames            |
| end of audio: decode what `frames_asr` holds      | `finish`                                                   |

Two deliberate bounds, where FunASR keeps everything in memory:
- before a start, `frames` holds at most PREROLL_KEEP_S (3 s) of audio; FunASR's list grows until the first end. A
  start further back than that (the VAD reports a start a few hundred ms late, never seconds) is clamped and logged.
- a sentence is at most the VAD's max_single_segment_time (PARASTREAM_MAX_SENTENCE_S), where FunASR's own VAD ends it.
The session's ring keeps every sample from `hold()` on; the worker releases only up to it.

A frame under 1 ms (the last, shorter one at close) makes FunASR's `beg_bias` divide by zero, which its server
catches and survives, losing that start; a start found in such a frame is ignored here too.
Deliberate divergence, for partials only: at a sentence end FunASR's server also resets the streaming model's cache.
Here the streaming model runs on, so 2pass partials are exactly online mode's (docs/pipeline.md says why).

Torch-free: the VAD is behind the `Vad` protocol (engine/model/vad.py is the real one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from engine.units import PREROLL_KEEP_S, SAMPLE_RATE, VAD_FRAME_MS, VAD_FRAME_SAMPLES

log = logging.getLogger(__name__)

FRAMES_KEPT_AFTER_END = 20  # FunASR's `frames = frames[-20:]`
PREROLL_KEEP_SAMPLES = int(PREROLL_KEEP_S * SAMPLE_RATE)
SAMPLES_PER_MS = SAMPLE_RATE // 1000


class Vad(Protocol):
    def new_cache(self) -> dict[str, Any]: ...

    def feed(self, cache: dict[str, Any], frame: np.ndarray, chunk_ms: int) -> list[list[int]]: ...


@dataclass(frozen=True)
class PendingSentence:
    """An ended sentence waiting for the offline model: ring range [audio_start, audio_end) and the VAD's bounds."""

    audio_start: int
    audio_end: int
    start_ms: int
    end_ms: int  # the VAD's end; where the audio ended if the close cut the sentence


@dataclass
class SentenceTracker:
    """One session's sentence bookkeeping. Plain data plus FunASR's VAD cache: it pickles into the session's
    snapshot whole, so a restored or moved session carries on from exactly here."""

    vad_cache: dict[str, Any]
    vad_pos: int = 0  # ring position the VAD has consumed (whole frames from 0; at close, the tail too)
    vad_ms: int = 0  # FunASR's vad_pre_idx
    frames_start: int = 0  # oldest position kept of FunASR's `frames` list (bounded: see the module docstring)
    funasr_frames_start: int = 0  # where FunASR's own list starts: 0 until the first end, then 20 frames before it
    speech_start: int | None = None  # start of the sentence in progress (FunASR's frames_asr); None: not in speech
    start_ms: int = -1  # the VAD's start of the sentence in progress
    pending: list[PendingSentence] = field(default_factory=list)  # oldest first
    finished: bool = False  # the end of audio was seen; nothing more will be queued

    def frames_ready(self, limit: int, final: bool) -> int:
        """Samples the VAD can take now, up to ring position `limit` (whole frames; at close, the tail too)."""
        n = limit - self.vad_pos
        return n if final else n - n % VAD_FRAME_SAMPLES

    def feed(self, vad: Vad, audio: np.ndarray) -> None:
        """Run the VAD over `audio` (float32, starting at `vad_pos`), frame by frame, queueing what ends."""
        for offset in range(0, len(audio), VAD_FRAME_SAMPLES):
            self._frame(vad, audio[offset : offset + VAD_FRAME_SAMPLES])

    def _frame(self, vad: Vad, frame: np.ndarray) -> None:
        frame_start = self.vad_pos
        n = len(frame)
        self.vad_pos += n
        self.frames_start = max(self.frames_start, self._preroll_floor(frame_start))
        frame_ms = n // SAMPLES_PER_MS  # len(bytes) // 32
        self.vad_ms += frame_ms
        segments = vad.feed(self.vad_cache, frame, VAD_FRAME_MS)
        if len(segments) != 1:
            return
        start_i, end_i = int(segments[0][0]), int(segments[0][1])
        if start_i != -1 and frame_ms > 0:
            beg_bias = (self.vad_ms - start_i) // frame_ms
            # frames[-beg_bias:]: the current frame and beg_bias - 1 before it; frames[-0:] is all of them.
            wanted = self.funasr_frames_start if beg_bias == 0 else frame_start - (beg_bias - 1) * VAD_FRAME_SAMPLES
            if max(wanted, self.funasr_frames_start) < self.frames_start:
                log.warning("VAD start %d ms reaches past the %.0f s of pre-roll kept; clamped", start_i, PREROLL_KEEP_S)
            self.speech_start = max(wanted, self.frames_start)
            self.start_ms = start_i
        if end_i != -1:
            if self.speech_start is not None:
                self._queue(self.vad_pos, end_i)
            self.speech_start = None
            self.funasr_frames_start = max(
                self.funasr_frames_start, self.vad_pos - FRAMES_KEPT_AFTER_END * VAD_FRAME_SAMPLES
            )
            self.frames_start = max(self.frames_start, self.funasr_frames_start)

    def finish(self, end_pos: int) -> None:
        """The end of audio (FunASR's `is_speaking: false`): the sentence in progress is decoded as it stands."""
        if self.speech_start is not None and end_pos > self.speech_start:
            self._queue(end_pos, end_pos * 1000 // SAMPLE_RATE)
        self.speech_start = None
        self.finished = True

    def _queue(self, audio_end: int, end_ms: int) -> None:
        assert self.speech_start is not None
        self.pending.append(PendingSentence(self.speech_start, audio_end, self.start_ms, end_ms))

    def _preroll_floor(self, frame_start: int) -> int:
        """The oldest position kept for pre-roll while not in speech (see the module docstring)."""
        return frame_start + VAD_FRAME_SAMPLES - PREROLL_KEEP_SAMPLES if self.speech_start is None else 0

    def hold(self) -> int:
        """The oldest ring position this session still needs: release no further."""
        held = [self.frames_start, *(p.audio_start for p in self.pending)]
        if self.speech_start is not None:
            held.append(self.speech_start)
        return min(held)
