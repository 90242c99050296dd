"""A baseline server: FunASR's 2pass pipeline served the way its Python WebSocket server does it.

FunASR's classic Python server (``runtime/python/websocket/funasr_wss_server.py``, ``ws_serve``) in mode ``2pass``,
behind the same HTTP/SSE contract as Parastream (docs/api.md: sessions, raw int16 appends, close, ``partial`` /
``sentence`` / ``final`` events, ``/readyz``), so the same load generator drives it. Like ``funasr_server --mode
threads`` (the ``funasr-threads`` baseline): ONE process, ONE shared set of ``funasr.AutoModel`` s (streaming
Paraformer, FSMN-VAD, offline Paraformer, CT-Transformer punctuation), each session with its own caches, and every
``generate()`` call running in a ``ThreadPoolExecutor`` (``--threads``, default 4), a session's calls in order.

Per session, per 60 ms frame (the audio is cut into FunASR's Python client's 1920-byte frames from the start of the
session, as Parastream and :mod:`benchmarks.funasr_2pass_loop` do; the last one is what is left at close), exactly
``ws_serve``'s order:

1. the streaming model (``chunk_size [0, 10, 5]``) on the frames since its last call, when they are 10 (600 ms)
   or when the previous frame's VAD result ended a sentence (then with ``is_final=True`` and its output discarded,
   as ``ws_serve`` does in 2pass); it sends the ``partial`` (``progress`` when it has no tokens or was discarded).
   So after each sentence end the 600 ms strides restart one frame later, as in ``ws_serve``;
2. the VAD on the frame (``chunk_size=60``) and the 2pass bookkeeping of :func:`benchmarks.funasr_2pass_loop.
   reference_2pass` (pre-roll, the one-segment rule, ``frames[-20:]`` after an end), step by step;
3. at a VAD end: the offline model on the sentence's frames, then punctuation with the session's punctuation
   cache, sent as a ``sentence``; then, as ``ws_serve`` does, the streaming model's frames and cache are reset.

At close: the streaming model's final call (its output discarded, as ``ws_serve`` discards it in 2pass mode), then
the sentence in progress is decoded, then ``final`` (the sentences' text joined). A call that raises ends the
session with an ``error`` event (the shared-AutoModel race of ``funasr_server``'s docstring can hit here too).
``generate()`` gets float32 input (``input_mode="float"`` of the reference loop: FunASR 1.4.16 takes some raw-PCM
frames for MP3). Sentence ``tokens`` are the characters of the offline model's text (the random models' vocabulary
is single CJK characters); no tokenizer is wrapped, which would race between threads.

Run: ``python -m benchmarks.baselines.funasr_2pass_server --model DIR --vad DIR --offline DIR --punc DIR --port 8002``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi.responses import JSONResponse

from benchmarks.baselines.funasr_server import GENERATE_OPTS, BaseSession, build_app, error
from benchmarks.funasr_2pass_loop import _KEEP_FRAMES, FRAME_BYTES, FRAME_MS, _load_bytes_values, _read_vad

SAMPLE_BYTES = 2
ONLINE_EVERY = 10  # ws_serve's chunk_interval: the streaming model runs once per 10 frames (600 ms)


@dataclass
class TwoPassState:
    """``ws_serve``'s per-connection variables (names as there)."""

    online_cache: dict[str, Any] = field(default_factory=dict)
    vad_cache: dict[str, Any] = field(default_factory=dict)
    punc_cache: dict[str, Any] = field(default_factory=dict)
    frames_online: list[bytes] = field(default_factory=list)
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (first sample, bytes)
    frames_asr: list[tuple[int, bytes]] = field(default_factory=list)
    vad_pre_idx: int = 0
    speech_start: bool = False
    speech_start_i: int = -1
    speech_end_i: int = -1
    segment_start: int = -1
    n_frames: int = 0


@dataclass
class Session(BaseSession):
    hotwords: str = ""
    state: TwoPassState = field(default_factory=TwoPassState)
    sentences: list[dict[str, Any]] = field(default_factory=list)


class TwoPassBaseline:
    def __init__(self, model: str, vad: str, offline: str, punc: str | None, threads: int, ncpu: int) -> None:
        self.dirs = {"streaming": model, "vad": vad, "offline": offline, "punc": punc}
        self.ncpu = ncpu
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="generate")
        self.models: dict[str, Any] = {}
        self.sessions: dict[str, Session] = {}
        self.generate_errors = 0
        self.created = 0

    title = "baseline (FunASR 2pass server design)"

    @property
    def ready(self) -> bool:
        return len(self.models) == 4

    def new_session(self, options: dict[str, Any]) -> BaseSession | JSONResponse:
        if options.get("mode", "2pass") != "2pass":
            return error(422, "invalid_options", "this baseline serves mode 2pass only")
        return Session(secrets.token_hex(16), hotwords=str(options.get("hotwords") or ""))

    def queue_audio(self, s: Session, last: bool) -> None:
        """Each whole 60 ms frame goes at once, as the client's message would; at close the shorter last frame
        (maybe empty), then the end."""
        while len(s.pending) >= FRAME_BYTES:
            s.queue.put_nowait((bytes(s.pending[:FRAME_BYTES]), False))
            del s.pending[:FRAME_BYTES]
        if last:
            s.queue.put_nowait((bytes(s.pending), True))
            s.pending.clear()

    def load(self) -> None:
        from engine.model.loading import load_automodel  # torch + funasr: after /healthz answers

        models = {role: load_automodel(d, ncpu=self.ncpu, role=role) if d else None for role, d in self.dirs.items()}
        self.models = models  # ready: all four at once

    # ---------------------------------------------------------------------------------------------- the calls

    def online(self, st: TwoPassState, audio: bytes, is_final: bool) -> list[str]:
        """``async_asr_online``: the streaming model on the frames since its last call."""
        if not audio:
            return []
        results = self.models["streaming"].generate(
            input=_load_bytes_values(audio), cache=st.online_cache, is_final=is_final, **GENERATE_OPTS
        )
        return list("".join(r.get("text", "") for r in results))

    def vad_frame(self, s: Session, position: int, frame: bytes) -> dict[str, Any] | None:
        """One frame of ``ws_serve`` after the streaming call: VAD, start/end bookkeeping, the offline decode at an
        end (what :func:`benchmarks.funasr_2pass_loop.reference_2pass` does per frame). A sentence, or None."""
        st = s.state
        st.frames.append((position, frame))
        duration_ms = len(frame) // 32
        st.vad_pre_idx += duration_ms
        if st.speech_start:
            st.frames_asr.append((position, frame))
        value = self.models["vad"].generate(
            input=_load_bytes_values(frame), cache=st.vad_cache, is_final=False, chunk_size=FRAME_MS
        )[0]["value"]
        st.speech_start_i, st.speech_end_i = _read_vad(tuple((int(a), int(b)) for a, b in value))
        if st.speech_start_i != -1 and duration_ms > 0:
            st.speech_start = True
            beg_bias = (st.vad_pre_idx - st.speech_start_i) // duration_ms
            st.frames_asr = list(st.frames[-beg_bias:])
            st.segment_start = st.speech_start_i
        sentence = None
        if st.speech_end_i != -1:
            sentence = self.offline(s, st.frames_asr, st.speech_end_i)
            st.frames_asr, st.speech_start, st.segment_start = [], False, -1
            st.frames = st.frames[-_KEEP_FRAMES:]
            st.frames_online = []  # ws_serve: frames_asr_online = [] and a fresh streaming cache at each end
            st.online_cache = {}
        return sentence

    def offline(self, s: Session, buffer: list[tuple[int, bytes]], end_ms: int) -> dict[str, Any] | None:
        """``async_asr``: offline model, then punctuation with the session's cache; None when nothing is sent."""
        if not buffer:
            return None
        audio_start = buffer[0][0]
        audio_end = buffer[-1][0] + len(buffer[-1][1]) // SAMPLE_BYTES
        kwargs = {"hotword": s.hotwords} if s.hotwords else {}
        try:  # ws_serve's bare try/except: SeACo's [] for token-less audio is swallowed, nothing sent
            result = self.models["offline"].generate(input=_load_bytes_values(b"".join(d for _, d in buffer)), **kwargs)[0]
        except IndexError:
            return None
        raw = str(result["text"])
        text = raw
        if raw and self.models["punc"] is not None:
            text = str(self.models["punc"].generate(input=raw, cache=s.state.punc_cache)[0]["text"])
        if not text:
            return None
        return {
            "index": len(s.sentences), "text": text, "tokens": list(raw.replace(" ", "")),
            "start_ms": s.state.segment_start, "end_ms": end_ms if end_ms != -1 else audio_end * 1000 // 16000,
            "timestamps": [[int(a), int(b)] for a, b in result.get("timestamp", []) or []],
            "audio_start_ms": audio_start * 1000 // 16000, "audio_end_ms": audio_end * 1000 // 16000,
        }

    def finish(self, s: Session) -> dict[str, Any] | None:
        """``is_speaking: false``: the streaming model's final call (discarded in 2pass), the sentence in progress."""
        st = s.state
        self.online(st, b"".join(st.frames_online), True)
        st.frames_online = []
        return self.offline(s, st.frames_asr, -1)

    # ---------------------------------------------------------------------------------------------- the session

    async def run_session(self, s: Session) -> None:
        loop = asyncio.get_running_loop()
        st = s.state
        while True:
            frame, last = await s.queue.get()
            try:
                if frame:
                    position = st.n_frames * FRAME_BYTES // SAMPLE_BYTES
                    st.n_frames += 1
                    st.frames_online.append(frame)
                    # ws_serve: is_final = (the previous frame's VAD result ended a sentence); the streaming model runs
                    # on every 10th frame since its last call, or on that is_final frame (output discarded in 2pass).
                    is_final = st.speech_end_i != -1
                    if len(st.frames_online) % ONLINE_EVERY == 0 or is_final:
                        audio, st.frames_online = b"".join(st.frames_online), []
                        tokens = await loop.run_in_executor(self.pool, self.online, st, audio, is_final)
                        s.processed = position + len(frame) // SAMPLE_BYTES
                        if tokens and not is_final:
                            s.emit("partial", {"tokens": tokens, "text": "".join(tokens), "samples_processed": s.processed})
                        else:
                            s.emit("progress", {"samples_processed": s.processed}, numbered=False)
                    sentence = await loop.run_in_executor(self.pool, self.vad_frame, s, position, frame)
                    if sentence is not None:
                        s.sentences.append(sentence)
                        s.emit("sentence", sentence)
                if last:
                    sentence = await loop.run_in_executor(self.pool, self.finish, s)
                    if sentence is not None:
                        s.sentences.append(sentence)
                        s.emit("sentence", sentence)
                    s.emit("final", {
                        "tokens": [t for x in s.sentences for t in x["tokens"]],
                        "text": "".join(x["text"] for x in s.sentences),
                        "samples_processed": s.received, "reason": "closed",
                    })
                    return
            except Exception as exc:  # another session's call may have swapped FunASR's shared kwargs
                self.generate_errors += 1
                s.emit("error", {"code": "inference_failed", "message": f"{type(exc).__name__}: {exc}"[:500]})
                return


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="streaming model directory")
    p.add_argument("--vad", required=True)
    p.add_argument("--offline", required=True)
    p.add_argument("--punc", default="", help="punctuation model directory ('' for none)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=4, help="generate() calls at once")
    p.add_argument("--ncpu", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads; generate() calls torch.set_num_threads(ncpu) on every call")
    args = p.parse_args(argv)
    b = TwoPassBaseline(args.model, args.vad, args.offline, args.punc or None, args.threads, args.ncpu)
    uvicorn.run(build_app(b), host=args.host, port=args.port, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
