"""A baseline server: FunASR's streaming Paraformer served the way users run it today.

Same HTTP/SSE contract as Parastream (docs/api.md: sessions, raw int16 appends, close, partial/final/error
events, /readyz, /healthz), so the same load generator drives it. Two modes:

* ``threads``: the FunASR Python server's design. ONE process, ONE shared ``funasr.AutoModel``, each session with
  its own cache dict, and ``generate()`` calls running in a ``ThreadPoolExecutor`` (``--threads``, default 4) so
  several sessions decode at once. A session's strides still run in order, one at a time (one consumer task per
  session awaits each call before the next), so any wrong text comes from FunASR itself: ``AutoModel.inference``
  writes each call's ``cache``/``is_final`` into the instance-wide ``self.kwargs`` and reads them back, and a
  concurrent call from another session can swap them in between (see engine/model/adapter.py). This baseline
  must exhibit that bug; it does not work around it.
* ``sequential``: one process, one model, each stride's ``generate()`` called inline in the event loop, strictly
  one at a time: the simplest correct server. FunASR's own runtime/python/websocket/funasr_wss_server.py (online
  mode) calls ``model.generate`` inline in its coroutine the same way.

``generate()`` calls ``torch.set_num_threads(ncpu)`` on every call, so ``--ncpu`` (default: the usable cores, from
``os.sched_getaffinity``) is the intra-op thread count of every call, in both modes.

Run: ``python -m benchmarks.baselines.funasr_server --mode threads --model DIR --port 8001``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from engine.units import STRIDE_SAMPLES

# FunASR's documented streaming recipe (and benchmarks.funasr_loop's): 600 ms strides, 300 ms look-ahead.
GENERATE_OPTS: dict[str, Any] = {"chunk_size": [0, 10, 5], "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 1}
TERMINAL = ("final", "error")


@dataclass
class Event:
    id: int | None  # None: a progress event (never a resume point, as in Parastream)
    type: str
    data: dict[str, Any]


@dataclass
class BaseSession:
    """What every baseline's session has: the HTTP side (build_app) and the event log its SSE stream reads."""

    id: str
    pending: bytearray = field(default_factory=bytearray)  # int16 bytes not yet queued (a whole stride or frame)
    received: int = 0
    processed: int = 0
    closed: bool = False
    events: list[Event] = field(default_factory=list)
    queue: asyncio.Queue[tuple[Any, bool]] = field(default_factory=asyncio.Queue)  # (audio, is the last)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1].type in TERMINAL

    def emit(self, type_: str, data: dict[str, Any], numbered: bool = True) -> None:
        ids = sum(1 for e in self.events if e.id is not None)
        self.events.append(Event(ids + 1 if numbered else None, type_, data))
        self.changed.set()  # wake every waiting subscriber, then re-arm
        self.changed = asyncio.Event()


@dataclass
class Session(BaseSession):
    cache: dict[str, Any] = field(default_factory=dict)  # this session's own FunASR cache
    stream: Any = None  # per-stream state a runtime keeps outside `cache` (funasr_onnx_server: its frontend)
    texts: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)


def pcm_to_float(pcm: bytes | bytearray) -> np.ndarray:
    # int16 -> float32 in [-1, 1): the scaling soundfile gives FunASR's demo (and tests.audio.to_float32).
    return np.frombuffer(bytes(pcm), dtype="<i2").astype(np.float32) / np.float32(32768.0)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class Server(Protocol):
    """What build_app needs of a baseline."""

    sessions: Any  # dict of session id to a BaseSession
    generate_errors: int
    created: int

    @property
    def title(self) -> str: ...

    @property
    def pool(self) -> ThreadPoolExecutor | None: ...

    @property
    def ready(self) -> bool: ...

    def load(self) -> None: ...

    def new_session(self, options: dict[str, Any]) -> BaseSession | JSONResponse: ...

    def run_session(self, session: Any) -> Coroutine[Any, Any, None]: ...

    def queue_audio(self, session: Any, last: bool) -> None: ...


class Baseline:
    def __init__(self, mode: str, model_dir: str, threads: int, ncpu: int) -> None:
        self.mode, self.model_dir, self.ncpu = mode, model_dir, ncpu
        # Threads mode only: the pool that runs generate() calls of different sessions at once.
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="generate") if mode == "threads" else None
        self.automodel: Any = None
        self.sessions: dict[str, Session] = {}
        self.generate_errors = 0
        self.created = 0

    @property
    def title(self) -> str:
        return f"baseline ({self.mode})"

    @property
    def ready(self) -> bool:
        return self.automodel is not None

    def new_session(self, options: dict[str, Any]) -> BaseSession | JSONResponse:
        return Session(secrets.token_hex(16))

    def queue_audio(self, s: Session, last: bool) -> None:
        """Every full stride is queued non-final at once, in order; the remainder waits for more audio, or, at close,
        is the one final generate() on the 0..9599 leftover samples, after any queued strides: FunASR's loop."""
        while len(s.pending) >= 2 * STRIDE_SAMPLES:
            s.queue.put_nowait((pcm_to_float(s.pending[: 2 * STRIDE_SAMPLES]), False))
            del s.pending[: 2 * STRIDE_SAMPLES]
        if last:
            s.queue.put_nowait((pcm_to_float(s.pending), True))
            s.pending.clear()

    def load(self) -> None:
        # Imported here (torch + funasr take ~7.5 s) so /healthz answers while the model loads.
        from engine.model.loading import load_automodel

        self.automodel = load_automodel(self.model_dir, ncpu=self.ncpu)  # dither 0: comparable with the reference

    def generate(self, session: Session, samples: np.ndarray, is_final: bool) -> str:
        results = self.automodel.generate(input=samples, cache=session.cache, is_final=is_final, **GENERATE_OPTS)
        return "".join(r.get("text", "") for r in results)

    async def run_session(self, s: Session) -> None:
        """The session's consumer: its strides, in order, one generate() at a time, then the final one."""
        loop = asyncio.get_running_loop()
        while True:
            samples, is_final = await s.queue.get()
            try:
                if self.pool is None:  # sequential: inline, blocking the event loop, like funasr_wss_server.py
                    text = self.generate(s, samples, is_final)
                else:
                    text = await loop.run_in_executor(self.pool, self.generate, s, samples, is_final)
            except Exception as exc:  # e.g. tensor-size errors from another session's cache: fail this one only
                self.generate_errors += 1
                s.cache, s.stream = {}, None
                s.emit("error", {"code": "inference_failed", "message": f"{type(exc).__name__}: {exc}"[:500]})
                return
            s.processed += len(samples)
            # generate() returns text only. The random test models' vocabulary is single CJK characters, so
            # list(text) is exactly the tokens this call produced (not so for Latin word pieces of a real model).
            tokens = list(text)
            s.texts.append(text)
            s.tokens.extend(tokens)
            if tokens:
                s.emit("partial", {"tokens": tokens, "text": text, "samples_processed": s.processed})
            elif not is_final:
                s.emit("progress", {"samples_processed": s.processed}, numbered=False)
            if is_final:
                s.cache, s.stream = {}, None
                s.emit("final", {"tokens": list(s.tokens), "text": "".join(s.texts),
                                 "samples_processed": s.processed, "reason": "closed"})
                return


async def stream(s: BaseSession, progress: bool) -> AsyncIterator[ServerSentEvent]:
    index = 0
    while True:
        while index < len(s.events):
            e = s.events[index]
            index += 1
            if e.id is None and not progress:
                continue
            yield ServerSentEvent(json.dumps(e.data, ensure_ascii=False), event=e.type,
                                  id=None if e.id is None else str(e.id))
            if e.type in TERMINAL:
                return
        await s.changed.wait()  # no await between the check above and here: no event can slip by


def build_app(b: Server) -> FastAPI:
    """The HTTP/SSE contract of docs/api.md (sessions, appends, close, events, readiness) over any baseline."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(asyncio.to_thread(b.load))
        yield
        loading.cancel()
        for s in b.sessions.values():
            if s.task is not None:
                s.task.cancel()
        if b.pool is not None:
            b.pool.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title=b.title, lifespan=lifespan)

    def lookup(session_id: str) -> BaseSession | JSONResponse:
        s: BaseSession | None = b.sessions.get(session_id)
        return s if s is not None else error(404, "session_not_found", f"no session {session_id}")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Any:
        return {"status": "ready"} if b.ready else error(503, "not_ready", "model loading")

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return {"generate_errors": b.generate_errors, "sessions": b.created}

    @app.post("/v1/sessions", status_code=201)
    async def create_session(request: Request) -> Any:
        if not b.ready:
            return error(503, "not_ready", "model loading")
        raw = await request.body()
        try:
            options = json.loads(raw) if raw else {}
        except ValueError:
            return error(422, "invalid_request", "body is not JSON")
        if not isinstance(options, dict) or options.get("sample_rate", 16000) != 16000:
            return error(422, "invalid_options", "only sample_rate 16000 is supported")
        s = b.new_session(options)
        if isinstance(s, JSONResponse):
            return s
        s.task = asyncio.create_task(b.run_session(s))
        b.sessions[s.id] = s
        b.created += 1
        return JSONResponse({"id": s.id, "worker": 0}, status_code=201)

    @app.post("/v1/sessions/{session_id}/audio")
    async def append(session_id: str, request: Request) -> Any:
        s = lookup(session_id)
        if isinstance(s, JSONResponse):
            return s
        if s.closed or s.ended:
            return error(409, "session_not_open", "the session was closed or failed")
        body = await request.body()
        if not body or len(body) % 2:
            return error(400, "invalid_audio", "body must be a whole number (>= 1) of int16 samples")
        s.pending += body
        s.received += len(body) // 2
        b.queue_audio(s, last=False)
        return {"id": s.id, "samples_received": s.received}

    @app.post("/v1/sessions/{session_id}/close")
    async def close(session_id: str) -> Any:
        s = lookup(session_id)
        if isinstance(s, JSONResponse):
            return s
        if s.ended and s.events[-1].type == "error":
            return error(409, "session_not_open", "the session failed")
        if not s.closed:  # closing twice is harmless
            s.closed = True
            b.queue_audio(s, last=True)
        return {"id": s.id, "samples_received": s.received}

    @app.get("/v1/sessions/{session_id}/events")
    async def events(session_id: str, progress: bool = False) -> Any:
        s = lookup(session_id)
        return s if isinstance(s, JSONResponse) else EventSourceResponse(stream(s, progress))

    return app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("threads", "sequential"), required=True)
    p.add_argument("--model", required=True, help="local model directory (config.yaml, model.pt, tokens.json)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=4, help="threads mode: generate() calls at once")
    p.add_argument("--ncpu", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch threads; generate() calls torch.set_num_threads(ncpu) on every call")
    args = p.parse_args(argv)
    app = build_app(Baseline(args.mode, args.model, args.threads, args.ncpu))
    # No access log: one line per append would cost the benchmark CPU.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
