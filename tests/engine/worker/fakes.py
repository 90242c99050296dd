"""Stand-ins for the 2pass models, for tests of the worker's bookkeeping and scheduling (not of FunASR's numbers:
tests/app/test_2pass.py compares the served sentences with FunASR's own loop on real models).

`EnergyVad` answers the way FunASR's streaming FSMN-VAD does, one call per frame: `[[start_ms, -1]]` when speech
starts (reported two frames late, with a 120 ms look-back), `[[-1, end_ms]]` after five quiet frames, `[]` otherwise.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

THRESHOLD = 0.02


class EnergyVad:
    def new_cache(self) -> dict[str, Any]:
        return {"ms": 0, "loud": 0, "quiet": 0, "in_speech": False, "first_loud_ms": 0, "last_loud_ms": 0}

    def feed(self, cache: dict[str, Any], frame: np.ndarray, chunk_ms: int) -> list[list[int]]:
        start_ms = cache["ms"]
        cache["ms"] += len(frame) // 16
        loud = len(frame) > 0 and float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) > THRESHOLD
        if loud:
            if cache["loud"] == 0:
                cache["first_loud_ms"] = start_ms
            cache["loud"] += 1
            cache["quiet"] = 0
            cache["last_loud_ms"] = cache["ms"]
        else:
            cache["quiet"] += 1
            cache["loud"] = 0
        if not cache["in_speech"] and cache["loud"] >= 2:
            cache["in_speech"] = True
            return [[max(0, cache["first_loud_ms"] - 120), -1]]
        if cache["in_speech"] and cache["quiet"] >= 5:
            cache["in_speech"] = False
            return [[-1, cache["last_loud_ms"]]]
        return []


@dataclass
class Decoded:
    tokens: list[str]
    text: str
    timestamps: list[list[int]]


@dataclass
class HashDecoder:
    """Tokens that depend on every sample of the sentence's audio (so a wrong cut shows), and the hotwords."""

    calls: list[int] = field(default_factory=list)  # batch sizes

    def decode(self, audios: list[np.ndarray], hotwords: str) -> list[Decoded]:
        self.calls.append(len(audios))
        out = []
        for audio in audios:
            digest = hashlib.sha256(audio.tobytes() + hotwords.encode()).hexdigest()
            tokens = [chr(0x4E00 + int(digest[i : i + 2], 16)) for i in range(0, 6, 2)] if len(audio) > 640 else []
            out.append(Decoded(tokens, "".join(tokens), [[i * 100, i * 100 + 80] for i in range(len(tokens))]))
        return out


class CountingPunctuator:
    """Appends the sentence's number within the session: shows that the cache carries across sentences."""

    def new_cache(self) -> dict[str, Any]:
        return {"n": 0}

    def punctuate(self, text: str, cache: dict[str, Any]) -> str:
        cache["n"] += 1
        return f"{text}。{cache['n']}"


def funasr_sentences(vad: EnergyVad, pcm: np.ndarray) -> list[tuple[int, int, int, int]]:
    """FunASR's ws_serve bookkeeping on lists of byte frames, transcribed directly: each sentence's (first sample,
    end sample, start_ms, end_ms) as its `frames_asr` holds it. The end-of-audio sentence has end_ms -1."""
    frames: list[tuple[int, int]] = []  # (first sample, samples) of each client frame
    frames_asr: list[tuple[int, int]] = []
    cache = vad.new_cache()
    vad_pre_idx = 0
    speech_start = False
    start_ms = -1
    out = []
    for pos in range(0, len(pcm), 960):
        frame = (pos, min(960, len(pcm) - pos))
        frames.append(frame)
        duration_ms = frame[1] * 2 // 32
        vad_pre_idx += duration_ms
        if speech_start:
            frames_asr.append(frame)
        segments = vad.feed(cache, pcm[pos : pos + frame[1]].astype(np.float32) / 32768, 60)
        start_i, end_i = (segments[0][0], segments[0][1]) if len(segments) == 1 else (-1, -1)
        if start_i != -1:
            speech_start = True
            beg_bias = (vad_pre_idx - start_i) // duration_ms
            frames_asr = list(frames[-beg_bias:])
            start_ms = start_i
        if end_i != -1:
            if frames_asr:
                out.append((frames_asr[0][0], sum(frames_asr[-1]), start_ms, end_i))
            frames_asr = []
            speech_start = False
            frames = frames[-20:]
    if frames_asr:
        out.append((frames_asr[0][0], sum(frames_asr[-1]), start_ms, -1))
    return out
