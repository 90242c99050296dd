"""FunASR's WebSocket protocol at `ws://HOST:PORT/`, for the clients written against FunASR's servers
(docs/funasr-websocket.md says how to point each one here and where the messages differ from FunASR's servers).

Each utterance of a connection is a session like any other (`Engine.create_session`): the same workers, placement,
limits, recovery and metrics as a REST session. Two tasks serve a connection:
- the receiver reads the client's messages: JSON text (app/protocols/funasr_ws_options.py), and PCM in frames of any
  size, re-cut into whole samples (an odd trailing byte waits for the next frame) and appended with `engine.feed`,
  which waits for ring room: a client that sends a file unpaced is slowed down, never refused, and since nothing is
  read while it waits, the socket itself pushes back. Appends are at most PARASTREAM_MAX_APPENDS_PER_S a second:
  past that, frames gather into larger appends (Connection.gather);
- the relay turns the session's events into FunASR's messages, in order.

Messages out, all with `mode`, `wav_name`, `text` and `is_final` (FunASR's clients index each of them):
- a partial: `online` (mode online) or `2pass-online`, with the stride's new text only;
- a sentence: `2pass-offline` (or `offline`), the punctuated sentence, `timestamp` a JSON *string*
  "[[start_ms,end_ms],...]" in ms of the utterance's audio (FunASR's C++ server's form, which funasr-client
  `json.loads` and funasr-python types `str`);
- exactly one message with `is_final: true` and `is_end: true` per utterance, after its end of audio. The clients
  stop reading at the first `is_final` (funasr-client, funasr-python, the C++ clients, the HTML5 page's file mode),
  and FunASR's newest Python client waits for `is_end`. So once the client has ended its audio, the relay holds
  each message back until the next one comes, and the session's final event marks the one it holds: the last
  message's text is sent once, as FunASR's C++ server sends its last result with `is_final`, so funasr-client's
  merge of the `2pass-offline` texts (`async_file_asr`) gets every sentence once and funasr-python, which keeps the
  last `is_final` message's text, gets the last sentence as it would from FunASR. With nothing held, the final
  message has empty text (in the mode of a partial, which every client appends and none replaces with);
- an error: `is_final: false`, `is_end: true`, `error` and `code` (FunASR's 2026 server's form), then the socket
  closes with a reason: 1008 for a message we cannot take, 1003 for data we cannot take, 1013 when the service is
  full or not ready, 1001 when it shuts down, 1011 when inference failed. (A message over
  PARASTREAM_MAX_WS_MESSAGE_BYTES is closed with 1009 by uvicorn itself, before it reaches this code.)

After the final, a text message is taken quietly (funasr-client sends a second `{"is_speaking": false}` when it
closes), and audio, or `is_speaking: true`, starts the next utterance with the connection's settings (FunASR's
Python client sends a list of files on one connection). A connection with nothing to do for
PARASTREAM_SESSION_IDLE_TIMEOUT_S is closed, as is one that reads nothing for PARASTREAM_SSE_SEND_TIMEOUT_S. A
socket that drops aborts its unfinished sessions at once: their rings and worker caches are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from app import auth
from app.protocols.funasr_ws_options import Config, ProtocolError, parse_text, strip_wav_header
from engine import logs, metrics
from engine.errors import EngineError, NotReady, ServiceFull, SessionNotFound, SessionNotOpen
from engine.events import ErrorCode, Failure, Final, Partial, Sentence
from engine.feed import feed
from engine.messages import Mode, PipelineOptions
from engine.service import Engine
from engine.sessions import Session
from engine.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter()

# What each mode's messages are called: (partials, sentences). FunASR's Python servers name them so; its C++ 2pass
# server says 2pass-* whatever was asked (docs/funasr-websocket.md).
LABELS: dict[Mode, tuple[str, str]] = {
    Mode.ONLINE: ("online", "online"),
    Mode.TWO_PASS: ("2pass-online", "2pass-offline"),
    Mode.OFFLINE: ("offline", "offline"),
}
# Utterances of one connection not yet ended with their final message; the receiver waits for a slot beyond it.
MAX_PENDING_UTTERANCES = 2
# Small frames are gathered up to 60 ms (FunASR's Python client's frame) before they are appended: each append wakes
# the session's worker, and funasr-python sends 10 ms frames. A stride is 600 ms, so this delays no partial.
MIN_APPEND_MS = 60
FAILURE_CLOSE = {ErrorCode.SHUTDOWN: 1001}  # otherwise 1011: the server could not finish the utterance
ENGINE_CLOSE: dict[type[EngineError], int] = {ServiceFull: 1013, NotReady: 1013}  # otherwise 1008


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(eq=False)
class Utterance:
    session: Session
    wav_name: str
    mode: Mode
    ended: bool = False  # the client ended its audio
    heard: bool = False  # its first frame came (a WAV header is looked for there)
    buffer: bytearray = field(default_factory=bytearray)  # received, not yet appended (under MIN_APPEND_MS, or odd)
    gone: bool = False  # its session ended early (failed, shutting down): its audio is dropped
    labels: tuple[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = LABELS[self.mode]


@router.websocket("/")
async def funasr_websocket(websocket: WebSocket) -> None:
    # FunASR's Python clients and funasr-client offer the subprotocol `binary`; its HTML5 page and C++ clients none.
    offered = websocket.scope.get("subprotocols") or []
    caller = auth.websocket_caller(websocket)  # FunASR's clients send no headers: `ws://HOST:PORT/?api_key=KEY`
    await websocket.accept(subprotocol="binary" if "binary" in offered else None)
    if caller is None:  # nothing is sent but the close (app/auth.py)
        await auth.refuse(websocket)
        return
    with metrics.websocket_connection("funasr_ws"):
        await Connection(websocket, websocket.app.state.engine, websocket.app.state.settings, caller.owner).run()


class Connection:
    def __init__(self, websocket: WebSocket, engine: Engine, settings: Settings, owner: str | None = None) -> None:
        self.websocket = websocket
        self.owner = owner  # the key's identity its sessions belong to (app/auth.py)
        self.engine = engine
        self.settings = settings
        self.config: Config | None = None  # none until the first text message
        self.current: Utterance | None = None  # the one taking audio
        self.pending: list[Utterance] = []  # started, final not yet sent
        self.started = 0
        self.queue: asyncio.Queue[Utterance] = asyncio.Queue()
        self.slots = asyncio.Semaphore(MAX_PENDING_UTTERANCES)
        self.send_lock = asyncio.Lock()

    async def run(self) -> None:
        receiver = asyncio.create_task(self.receive())
        relay = asyncio.create_task(self.relay())
        close: Close | None = None
        try:
            done, _ = await asyncio.wait({receiver, relay}, return_when=asyncio.FIRST_COMPLETED)
            task = receiver if receiver in done else relay
            if task.exception() is not None:
                about = logs.fields(self.current.session) if self.current is not None else None
                log.error("FunASR WebSocket connection failed", exc_info=task.exception(), extra=about)
                close = Close(1011, "internal error; the server log has the details")
            else:
                close = task.result()
        finally:
            for t in (receiver, relay):
                t.cancel()
            await asyncio.gather(receiver, relay, return_exceptions=True)
            for utterance in self.pending:  # the client is gone, or will be: free what it holds now
                if utterance.session.state.holds_resources:
                    with contextlib.suppress(EngineError):
                        self.engine.abort(utterance.session.id)
        if close is not None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
                await asyncio.wait_for(self.websocket.close(close.code, _reason(close.reason)), 5)

    # --- the client's messages ---------------------------------------------------------------------------------

    async def receive(self) -> Close | None:
        """Until the client leaves (None) or must be sent away (a Close, after an error message)."""
        idle = self.settings.session_idle_timeout_s
        while True:
            held = self.held_back()
            try:
                message = await asyncio.wait_for(self.websocket.receive(), idle if held is None else min(idle, held))
            except TimeoutError:
                if held is not None and self.current is not None:  # audio held back by the append rate: it is due
                    try:
                        await self.gather(self.current)
                    except (ProtocolError, EngineError) as exc:
                        return await self.refuse(exc)
                    continue
                if self.current is None and not self.pending:
                    return Close(1000, f"no message for {idle:g} s (PARASTREAM_SESSION_IDLE_TIMEOUT_S)")
                continue  # an open session has its own idle timeout; its final ends the connection
            if message["type"] == "websocket.disconnect":
                return None
            try:
                if message.get("bytes") is not None:
                    await self.audio(message["bytes"])
                elif message.get("text") is not None:
                    await self.text(message["text"])
            except (ProtocolError, EngineError) as exc:
                return await self.refuse(exc)

    async def text(self, text: str) -> None:
        message = parse_text(text, self.config or Config())
        if self.current is not None:  # mid-utterance only the end of audio counts; settings wait for the next one
            if message.ends:
                await self.end(self.current)
            return
        self.config = message.config
        # After a final, `is_speaking: false` again is taken quietly (funasr-client sends it when it closes).
        if message.starts or (message.ends and not self.started):
            utterance = await self.start()
            if message.ends:
                await self.end(utterance)

    async def audio(self, data: bytes) -> None:
        if self.config is None:
            raise ProtocolError(
                "the first message must be JSON text, e.g. {\"mode\": \"online\", \"chunk_size\": [5, 10, 5], "
                "\"is_speaking\": true}; then binary PCM",
                close_code=1003,
            )
        utterance = self.current or await self.start()
        if not utterance.heard:
            utterance.heard = True
            data = strip_wav_header(data)
        utterance.buffer += data
        await self.gather(utterance)

    async def gather(self, utterance: Utterance) -> None:
        """Appends the buffer once it holds MIN_APPEND_MS, at most PARASTREAM_MAX_APPENDS_PER_S times a second. Past
        that rate nothing is refused: the audio gathers into a larger append (receive() comes back for it when the
        next one is due), and only a buffer of PARASTREAM_MAX_APPEND_BYTES waits, reading nothing meanwhile, so TCP
        slows the client down. A client sending unpaced 10 ms frames gets fewer, larger appends, not an error."""
        if len(utterance.buffer) < utterance.session.sample_rate * 2 * MIN_APPEND_MS // 1000:
            return
        bucket = utterance.session.appends
        if bucket is not None and not await bucket.admit(len(utterance.buffer), self.settings.max_append_bytes):
            return  # held back: held_back() times the next try
        await self.append(utterance)

    def held_back(self) -> float | None:
        """Seconds until the audio gather() held back may be appended; None when none is held."""
        u = self.current
        if u is None or u.session.appends is None or u.gone:
            return None
        if len(u.buffer) < u.session.sample_rate * 2 * MIN_APPEND_MS // 1000:
            return None
        return u.session.appends.wait()

    async def append(self, utterance: Utterance) -> None:
        """The buffer's whole samples; an odd trailing byte stays for the next frame, whatever the frame sizes."""
        whole = len(utterance.buffer) - len(utterance.buffer) % 2
        pcm = bytes(utterance.buffer[:whole])
        del utterance.buffer[:whole]
        if pcm and not utterance.gone:
            try:
                await feed(self.engine, utterance.session.id, pcm, self.settings.max_append_bytes)
            except (SessionNotOpen, SessionNotFound, NotReady):
                utterance.gone = True  # it failed, timed out or the server is draining: the relay says how it ended

    async def start(self) -> Utterance:
        await self.slots.acquire()  # released by the relay once the utterance's final is sent
        config = self.config or Config()
        try:
            mode = config.mode or self.engine.default_mode()
            pipeline = PipelineOptions(mode, config.hotwords)
            session = self.engine.create_session(
                config.audio_fs, config.stream_options(), pipeline, protocol="funasr_ws", owner=self.owner
            )
        except BaseException:
            self.slots.release()
            raise
        utterance = Utterance(session, config.wav_name, mode)
        self.current = utterance
        self.pending.append(utterance)
        self.started += 1
        self.queue.put_nowait(utterance)
        log.info(  # not wav_name, nor hotwords: what the client names is its own
            "FunASR WebSocket utterance %d of its connection is session %s", self.started, session.id,
            extra=logs.fields(session),
        )
        return utterance

    async def end(self, utterance: Utterance) -> None:
        await self.append(utterance)
        utterance.buffer.clear()  # half a sample cannot be transcribed
        utterance.ended = True  # before the close: every message from now on is held back by one (module docstring)
        self.current = None
        with contextlib.suppress(SessionNotOpen, SessionNotFound):  # it already ended: the relay says how
            self.engine.close(utterance.session.id)

    async def refuse(self, exc: ProtocolError | EngineError) -> Close:
        if isinstance(exc, ProtocolError):
            close_code = exc.close_code
        else:
            close_code = ENGINE_CLOSE.get(type(exc), 1008)
        config = self.config or Config()
        mode = self.current.labels[0] if self.current else (config.mode or self.engine.default_mode()).value
        message: dict[str, Any] = {"mode": mode, "wav_name": config.wav_name, "text": "", "is_final": False}
        message |= {"is_end": True, "error": exc.message, "code": exc.code}
        if isinstance(exc, EngineError) and exc.retry_after_s is not None:
            message["retry_after_s"] = exc.retry_after_s
        with contextlib.suppress(WebSocketDisconnect, TimeoutError):
            await self.send(message)
        return Close(close_code, exc.message)

    # --- the relay ------------------------------------------------------------------------------------------

    async def relay(self) -> Close | None:
        """The utterances' messages, one utterance after the other, until one ends the connection."""
        while True:
            utterance = await self.queue.get()
            try:
                close = await self.relay_one(utterance)
            except WebSocketDisconnect:
                return None  # the client is gone; run() aborts what is still pending
            except TimeoutError:
                return Close(1008, f"the client read nothing for {self.settings.sse_send_timeout_s:g} s")
            self.pending.remove(utterance)
            self.slots.release()
            if close is not None:
                return close

    async def relay_one(self, u: Utterance) -> Close | None:
        online, offline = u.labels
        held: dict[str, Any] | None = None
        expected = 1
        async for event in u.session.follow():
            if event.id != expected:  # trimmed from the log before it was sent: never send a transcript with a hole
                await self.send(self.error_message(u, "events were lost: the client read too slowly", "history_lost"))
                return Close(1008, "the client read too slowly")
            expected = event.id + 1
            payload = event.payload
            if isinstance(payload, Final):
                last = held if held is not None else self.message(u, online, "")
                await self.send({**last, "is_final": True, "is_end": True})
                if payload.reason == "max_duration":
                    limit = self.settings.max_session_s
                    return Close(1000, f"max_duration: an utterance may last {limit:g} s (PARASTREAM_MAX_SESSION_S)")
                if payload.reason != "closed":  # idle_timeout: the client stopped sending audio without ending it
                    return Close(1000, f"{payload.reason}: no audio for {self.settings.session_idle_timeout_s:g} s")
                return None
            if isinstance(payload, Failure):
                if held is not None:
                    await self.send(held)
                await self.send(self.error_message(u, payload.message, payload.code.value))
                return Close(FAILURE_CLOSE.get(payload.code, 1011), payload.message)
            message = self.partial(u, payload) if isinstance(payload, Partial) else self.sentence(u, payload)
            if message is None:
                continue
            if u.ended:
                if held is not None:
                    await self.send(held)
                held = message
            else:
                await self.send(message)
        return None  # pragma: no cover - follow() ends with a terminal event

    def message(self, u: Utterance, mode: str, text: str) -> dict[str, Any]:
        return {"mode": mode, "wav_name": u.wav_name, "text": text, "is_final": False}

    def partial(self, u: Utterance, partial: Partial) -> dict[str, Any] | None:
        return self.message(u, u.labels[0], partial.text) if partial.text else None

    def sentence(self, u: Utterance, sentence: Sentence) -> dict[str, Any]:
        message = self.message(u, u.labels[1], sentence.text)
        if sentence.timestamps:
            message["timestamp"] = json.dumps([list(pair) for pair in sentence.timestamps], separators=(",", ":"))
        return message

    def error_message(self, u: Utterance, error: str, code: str) -> dict[str, Any]:
        return {**self.message(u, u.labels[0], ""), "is_end": True, "error": error, "code": code}

    async def send(self, message: dict[str, Any]) -> None:
        """One message; TimeoutError when the client reads nothing for PARASTREAM_SSE_SEND_TIMEOUT_S."""
        text = json.dumps(message, ensure_ascii=False)
        async with self.send_lock:
            await asyncio.wait_for(self.websocket.send_text(text), self.settings.sse_send_timeout_s)


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."
