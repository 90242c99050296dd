"""OpenAI's transcription response formats (`json`, `text`, `verbose_json`, `srt`, `vtt`), built from a session's
typed events (engine/events.py).

Segments:
- **offline mode** (VAD + offline model): one segment per `Sentence`, from the VAD's start to its end of speech,
  with the punctuated sentence as its text. Words are the offline model's tokens with their timestamps (word pieces
  ending in `@@` joined into one word), where the model gives timestamps.
- **online mode** (the streaming model alone): a `Partial` covers its 600 ms stride, so segments are made of
  consecutive partials: a stride that produced no tokens (a pause of at least one stride) ends a segment, and so does
  a segment reaching MAX_SEGMENT_S. Times are stride bounds (600 ms resolution). The streaming model gives no token
  times, so there are no words.

Fields OpenAI's Whisper segments carry that Paraformer has no value for (`tokens`, `avg_logprob`,
`compression_ratio`, `no_speech_prob`, `temperature`, `seek`) are present with neutral values ([] and 0, and a
compression ratio of 1), so that clients that read them find what passes their quality checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.events import Partial, Sentence

MAX_SEGMENT_S = 30.0  # online mode: the longest segment (Whisper's window), so that subtitles stay readable
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Transcript:
    text: str  # the final's text: the whole transcript
    duration: float  # seconds of audio
    segments: tuple[Segment, ...]
    words: tuple[Word, ...]  # empty where the model gives no token times


def transcript(
    text: str, events: Sequence[object], duration: float, stride_samples: int, sample_rate: int
) -> Transcript:
    """The transcript of a finished session from its events (`Partial`s and `Sentence`s; others are skipped)."""
    sentences = [e for e in events if isinstance(e, Sentence)]
    if sentences:
        return Transcript(text, duration, segments_of_sentences(sentences), words_of_sentences(sentences))
    partials = [e for e in events if isinstance(e, Partial)]
    return Transcript(text, duration, segments_of_partials(partials, stride_samples, sample_rate), ())


def segments_of_sentences(sentences: Sequence[Sentence]) -> tuple[Segment, ...]:
    return tuple(Segment(s.start_ms / 1000, s.end_ms / 1000, s.text) for s in sentences if s.text)


def words_of_sentences(sentences: Sequence[Sentence]) -> tuple[Word, ...]:
    """Each token with its [start, end] ms; FunASR's word pieces (`hel@@` `lo`) make one word. A sentence whose
    timestamps do not pair up with its tokens (a model without timestamps gives []) contributes none."""
    words: list[Word] = []
    for s in sentences:
        if len(s.timestamps) != len(s.tokens):
            continue
        piece, start = "", 0
        for token, (a, b) in zip(s.tokens, s.timestamps):
            if not piece:
                start = a
            joined = token.endswith("@@")
            piece += token[:-2] if joined else token
            if not joined:
                words.append(Word(piece, start / 1000, b / 1000))
                piece = ""
        if piece:
            words.append(Word(piece, start / 1000, s.timestamps[-1][1] / 1000))
    return tuple(words)


def segments_of_partials(partials: Sequence[Partial], stride_samples: int, sample_rate: int) -> tuple[Segment, ...]:
    """Online mode: runs of consecutive strides with tokens (see the module docstring). A partial's
    `samples_processed` is the end of its stride; the stride began one stride earlier, or where the last one ended."""
    segments: list[Segment] = []
    start = end = last = 0
    texts: list[str] = []
    limit = int(MAX_SEGMENT_S * sample_rate)
    for p in partials:
        stride_start = max(last, p.samples_processed - stride_samples)
        if texts and (stride_start > end or p.samples_processed - start > limit):
            segments.append(Segment(start / sample_rate, end / sample_rate, "".join(texts)))
            texts = []
        if not texts:
            start = stride_start
        texts.append(p.text)
        end = last = p.samples_processed
    if texts:
        segments.append(Segment(start / sample_rate, end / sample_rate, "".join(texts)))
    return tuple(s for s in segments if s.text)


# --- the formats --------------------------------------------------------------------------------------------


def usage(t: Transcript) -> dict[str, Any]:
    """OpenAI's usage for duration-billed models (whisper-1): whole seconds, rounded up."""
    return {"type": "duration", "seconds": math.ceil(t.duration)}


def as_json(t: Transcript) -> dict[str, Any]:
    return {"text": t.text, "usage": usage(t)}


def as_verbose_json(t: Transcript, language: str, words: bool) -> dict[str, Any]:
    """Whisper's verbose_json. `words` (timestamp_granularities[] has `word`): the words, [] where there are none."""
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": language,
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [
            {
                "id": i,
                "seek": 0,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
            for i, s in enumerate(t.segments)
        ],
    }
    if words:
        body["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in t.words]
    body["usage"] = usage(t)
    return body


def as_text(t: Transcript) -> str:
    return t.text + "\n"


def _clock(seconds: float, decimal: str) -> str:
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def as_srt(t: Transcript) -> str:
    return "".join(
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n\n" for i, s in enumerate(t.segments, 1)
    )


def as_vtt(t: Transcript) -> str:
    return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n\n" for s in t.segments)
