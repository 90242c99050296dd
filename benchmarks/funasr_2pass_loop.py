"""In-process reference sentences from FunASR's OWN 2pass pipeline, for tests and benchmarks.

What a 2pass session's corrected sentences must equal: the loop of FunASR's classic Python WebSocket server
(``runtime/python/websocket/funasr_wss_server.py`` at ``0d6e6a2fb``, 2025-03-20: ``ws_serve`` with ``async_vad`` and
``async_asr``), run here single-process, one session, through each model's own ``AutoModel.generate()`` (the path
that is correct for one session at a time). The streaming model (``async_asr_online``) is left out: it sends the
partials, and nothing it does decides a sentence or its text.

**Framing.** The server sees the client's frames; a REST session has none, so the reference cuts the whole clip into
canonical 60 ms frames (1920 bytes of 16 kHz int16) from the start of the clip, the last frame being whatever is
left (shorter, never empty). This is the framing Parastream's server uses for REST sessions; FunASR's own Python
client sends the same 60 ms frames (``chunk_size[1] = 10``, ``chunk_interval = 10``). Frame size matters: it moves
the pre-roll and, at larger frames, one VAD call can hold two events, which the loop ignores.

**The loop, line for line** (the server's names in ``code``). Per frame:

1. ``frames.append(frame)``; ``vad_pre_idx += len(frame) // 32`` (ms, floored per frame);
2. if ``speech_start``: the frame is appended to the sentence buffer ``frames_asr`` *before* the VAD sees it;
3. ``model_vad.generate(input=frame, cache=vad_cache, is_final=False, chunk_size=60)``; the result is read only
   when it holds exactly one segment: ``[[start, -1]]`` a start, ``[[-1, end]]`` an end, ``[[start, end]]`` both;
4. at a start: ``speech_start = True``; ``beg_bias = (vad_pre_idx - start) // duration_ms``;
   ``frames_asr = frames[-beg_bias:]`` (Python's ``frames[-0:]`` is *all* of ``frames``: a start inside the current
   frame takes every frame kept so far);
5. at an end: ``async_asr(b"".join(frames_asr))``, then ``frames_asr = []``, ``speech_start = False``,
   ``frames = frames[-20:]`` (``vad_pre_idx`` is never reset while speaking).

At the end of audio (``is_speaking: false``) whatever is in ``frames_asr`` is decoded the same way (``end_ms`` -1
here), then ``frames``, ``vad_pre_idx`` and the VAD cache reset.

``async_asr``: an empty buffer sends ``{"text": ""}`` without decoding. Otherwise
``model_asr.generate(input=audio, **status_dict_asr)[0]`` (``status_dict_asr`` holds ``hotword`` once a client sent
``hotwords``; absent otherwise), then, when its text is not empty and a punctuation model is loaded,
``model_punc.generate(input=text, cache=punc_cache)[0]`` (the cache lives as long as the connection), and a
message is sent only when the resulting text is not empty. The whole of ``async_asr`` sits in a bare
``try/except`` that prints ``error in asr offline`` and carries on.

**Decisions where the server crashes or FunASR misbehaves:**

* SeACo returns ``[]`` for audio its predictor finds no token in (in practice anything up to ~40 ms, and longer
  near-silence with random weights), so the server's ``[0]`` raises ``IndexError``, its ``except`` swallows it and
  nothing is sent; below ~16 ms the frontend raises instead. Either way: no sentence, a :class:`SkippedDecode` with
  ``decoded=True`` and the error, and the loop goes on, as the server's does. The punctuation cache is untouched
  (punctuation never ran).
* ``input_mode="float"`` (default): each ``generate()`` gets the float32 array that FunASR's ``load_bytes`` makes
  of the frame's bytes (``int16 / 32768``, bit-identical values) instead of the bytes. funasr 1.4.16's
  ``load_bytes`` sniffs raw PCM for container headers and takes a near-silent frame whose first sample is -1
  (``ff ff``) followed by bytes that parse as MPEG frame headers for an MP3 file; decoding it then raises
  ``RuntimeError`` (synth_sentences seed 1 has such a frame). ``input_mode="bytes"`` passes the bytes, as the
  server does, and handles that failure as the classic server does: a failed VAD call leaves ``speech_start_i``
  and ``speech_end_i`` at their previous values (a failure on the first frame ends the server's handler with a
  ``NameError``: here ``aborted``), and the frame never reaches the VAD, so the VAD's clock falls one frame behind
  ``vad_pre_idx``.

**Tokens** are captured from FunASR's own call: ``SeacoParaformer.inference`` turns ids into tokens with
``tokenizer.ids2tokens`` once per item and returns only the post-processed text, so the tokenizer object that
``generate()`` uses (the one in FunASR's baseline kwargs, restored before every call) gets an instance-level
``ids2tokens`` wrapper for that one call, removed afterwards.

Use models loaded by ``engine.model.loading.load_automodel(..., role=...)`` so that dither is 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "SkippedDecode",
    "Sentence",
    "TwoPassReference",
    "frames_of",
    "reference_2pass",
]

FRAME_BYTES = 1920  # 60 ms of 16 kHz int16: FunASR's Python client's frame, Parastream's canonical REST framing
FRAME_MS = 60  # the VAD's chunk_size: chunk_size[1] * 60 / chunk_interval = 10 * 60 / 10
_SAMPLE_BYTES = 2
_KEEP_FRAMES = 20  # frames = frames[-20:] after a sentence end


@dataclass(frozen=True)
class Sentence:
    """One sentence the server sends as ``2pass-offline``.

    ``start_ms`` / ``end_ms``: the VAD's start and end of the segment (ms from the clip's start, on the VAD's own
    clock); ``end_ms`` is -1 when the end of audio cut it. ``[audio_start, audio_end)``: the samples of the clip
    that were decoded (the sentence buffer, pre-roll included). ``tokens``: the offline model's tokens;
    ``raw_text``: its text; ``text``: after punctuation (``raw_text`` without a punctuation model);
    ``timestamps``: the offline model's ``[start_ms, end_ms]`` pairs as ``generate()`` returns them, relative to
    ``audio_start``.
    """

    index: int
    start_ms: int
    end_ms: int
    audio_start: int
    audio_end: int
    tokens: tuple[str, ...]
    raw_text: str
    text: str
    timestamps: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class SkippedDecode:
    """A sentence end (or the end of audio) that sent no text: ``decoded`` says whether the offline model ran.

    ``after``: how many sentences were sent before it. ``reason``: ``empty buffer`` (no start was seen: the server
    sends ``{"text": ""}``), ``empty text`` / ``empty punctuated text``, or ``error: ...`` (what the server's
    ``except`` swallowed).
    """

    after: int
    start_ms: int
    end_ms: int
    audio_start: int
    audio_end: int
    decoded: bool
    reason: str


@dataclass(frozen=True)
class TwoPassReference:
    sentences: tuple[Sentence, ...]
    skipped: tuple[SkippedDecode, ...]
    # Every non-empty VAD result, as (frame index, segments): also those the loop ignored (more than one segment).
    vad_results: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]
    # bytes mode only: why the server's handler would have died (then nothing after it was processed).
    aborted: str | None = None

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.sentences)


def frames_of(pcm: np.ndarray) -> list[bytes]:
    """The canonical framing: 1920-byte (60 ms) frames from the clip's start, the last one whatever is left."""
    data = _check_pcm(pcm).tobytes()
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def reference_2pass(
    vad: Any,
    offline: Any,
    punc: Any | None,
    pcm: np.ndarray,
    hotwords: str = "",
    input_mode: Literal["float", "bytes"] = "float",
) -> TwoPassReference:
    """Run the classic server's 2pass loop over ``pcm`` (1-D int16, 16 kHz) with FunASR's ``AutoModel``s ``vad``,
    ``offline`` and ``punc`` (None: no punctuation, like a server started with ``--punc_model ""``).

    ``hotwords``: the already-normalised space-separated words a client sent; passed as ``hotword=`` to every
    offline ``generate()`` call, absent when empty. See the module docstring for the loop and ``input_mode``.
    """
    if input_mode not in ("float", "bytes"):
        raise ValueError(f"input_mode must be 'float' or 'bytes', not {input_mode!r}")
    status_dict_asr: dict[str, Any] = {"hotword": hotwords} if hotwords else {}
    status_dict_vad: dict[str, Any] = {"cache": {}, "is_final": False, "chunk_size": FRAME_MS}
    status_dict_punc: dict[str, Any] = {"cache": {}}

    def as_input(data: bytes) -> Any:
        return data if input_mode == "bytes" else _load_bytes_values(data)

    sentences: list[Sentence] = []
    skipped: list[SkippedDecode] = []
    vad_results: list[tuple[int, tuple[tuple[int, int], ...]]] = []
    frames: list[tuple[int, bytes]] = []  # (first sample, bytes)
    frames_asr: list[tuple[int, bytes]] = []
    vad_pre_idx = 0
    speech_start = False
    speech_start_i: int | None = None  # None: never assigned (the server's NameError)
    speech_end_i = -1
    segment_start = -1

    def async_asr(buffer: list[tuple[int, bytes]], end_ms: int) -> None:
        audio_start = buffer[0][0] if buffer else -1
        audio_end = buffer[-1][0] + len(buffer[-1][1]) // _SAMPLE_BYTES if buffer else -1

        def skip(decoded: bool, reason: str) -> None:
            skipped.append(SkippedDecode(len(sentences), segment_start, end_ms, audio_start, audio_end, decoded, reason))

        audio_in = b"".join(data for _, data in buffer)
        if len(audio_in) == 0:
            skip(False, "empty buffer")
            return
        try:  # the server's bare try/except around async_asr
            tokens: list[list[str]] = []
            with _capturing_ids2tokens(offline, tokens):
                rec_result = offline.generate(input=as_input(audio_in), **status_dict_asr)[0]
            raw_text = str(rec_result["text"])
            text = raw_text
            if punc is not None and len(raw_text) > 0:
                text = str(punc.generate(input=raw_text, **status_dict_punc)[0]["text"])
        except Exception as exc:  # noqa: BLE001 - the server swallows everything here
            skip(True, f"error: {exc!r}")
            return
        if len(text) == 0:
            skip(True, "empty punctuated text" if raw_text else "empty text")
            return
        stamps = tuple((int(a), int(b)) for a, b in rec_result.get("timestamp", []) or [])
        sentences.append(
            Sentence(
                len(sentences), segment_start, end_ms, audio_start, audio_end,
                tuple(tokens[-1]) if tokens else (), raw_text, text, stamps,
            )
        )

    for index, frame in enumerate(frames_of(pcm)):
        position = index * FRAME_BYTES // _SAMPLE_BYTES
        frames.append((position, frame))
        duration_ms = len(frame) // 32
        vad_pre_idx += duration_ms
        if speech_start:
            frames_asr.append((position, frame))
        try:
            value = vad.generate(input=as_input(frame), **status_dict_vad)[0]["value"]
            segments = tuple((int(s), int(e)) for s, e in value)
            if segments:
                vad_results.append((index, segments))
            speech_start_i, speech_end_i = _read_vad(segments)
        except Exception as exc:  # noqa: BLE001 - the classic server: print("error in vad"), values unchanged
            if input_mode == "float":
                raise
            if speech_start_i is None:
                return TwoPassReference(tuple(sentences), tuple(skipped), tuple(vad_results), f"frame {index}: {exc!r}")
        if speech_start_i != -1:
            speech_start = True
            if duration_ms == 0:
                reason = f"frame {index}: ZeroDivisionError (a start on a frame under 1 ms)"
                return TwoPassReference(tuple(sentences), tuple(skipped), tuple(vad_results), reason)
            beg_bias = (vad_pre_idx - speech_start_i) // duration_ms
            frames_asr = list(frames[-beg_bias:])
            segment_start = speech_start_i
        if speech_end_i != -1:
            async_asr(frames_asr, speech_end_i)
            frames_asr = []
            speech_start = False
            segment_start = -1
            frames = frames[-_KEEP_FRAMES:]
    # {"is_speaking": false}: decode what is buffered, then reset (frames, vad_pre_idx, the VAD cache).
    async_asr(frames_asr, -1)
    return TwoPassReference(tuple(sentences), tuple(skipped), tuple(vad_results))


def _read_vad(segments: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """``async_vad``: (start, end), -1 for "none"; a result is read only when it holds exactly one segment."""
    if len(segments) != 1:
        return -1, -1
    return segments[0]


def _load_bytes_values(data: bytes) -> np.ndarray:
    """What ``funasr.utils.load_utils.load_bytes`` makes of raw int16 PCM: ``(x.astype(float32) - 0) / 32768``."""
    result: np.ndarray = np.frombuffer(data, dtype=np.int16).astype(np.float32) / 32768
    return result


def _check_pcm(pcm: np.ndarray) -> np.ndarray:
    if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16 or pcm.ndim != 1:
        raise TypeError("pcm must be a 1-D int16 numpy array of 16 kHz audio")
    return np.ascontiguousarray(pcm).astype("<i2", copy=False)


@contextlib.contextmanager
def _capturing_ids2tokens(automodel: Any, calls: list[list[str]]) -> Iterator[None]:
    """Record every ``ids2tokens`` result of the tokenizer(s) ``generate()`` may use, for one call."""
    base = getattr(automodel, "_base_kwargs_map", {}).get("kwargs", {})
    candidates = [automodel.kwargs.get("tokenizer"), base.get("tokenizer")]
    tokenizers = [t for i, t in enumerate(candidates) if t is not None and all(t is not u for u in candidates[:i])]
    for tokenizer in tokenizers:
        inner = tokenizer.ids2tokens

        def wrapper(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            tokens = _inner(*args, **kwargs)
            calls.append(list(tokens))
            return tokens

        tokenizer.ids2tokens = wrapper
    try:
        yield
    finally:
        for tokenizer in tokenizers:
            del tokenizer.ids2tokens
