"""OpenAI's realtime transcription over WebSocket: `/v1/realtime?intent=transcription`, as its SDK speaks it
(`client.realtime.connect(...)`, and the older `client.beta.realtime` with `transcription_session.update`).

The client sends 24 kHz PCM16 (base64) in `input_audio_buffer.append`; each engine session it goes into is opened at
sample_rate 24000 and resampled to 16 kHz on arrival (engine/audio.py, split-invariant), fed with engine.feed (an
append waits for ring room, so a client sending faster than the worker is slowed by TCP, not refused; appends past
PARASTREAM_MAX_APPENDS_PER_S are gathered into larger ones, `_flush`), and its typed events are relayed as they come
(Session.follow). A session that lasts PARASTREAM_MAX_SESSION_S ends the connection (`_expire`).

How items map to sessions (docs/openai.md):
- **Per sentence** (turn detection on, the default, where the service has a VAD): one engine session in mode 2pass
  runs for as long as audio comes. Its partials are `...transcription.delta`s of the item in progress; each sentence
  the VAD ends completes an item: `input_audio_buffer.speech_started` (audio_start_ms), `speech_stopped`
  (audio_end_ms), `committed`, and `...transcription.completed` with the punctuated sentence. The VAD reports a
  sentence at its end, so all four come together, after that item's deltas (OpenAI sends speech_started when speech
  starts). `input_audio_buffer.commit` closes the session, which flushes the sentence in progress; the next append
  opens a new one. Partials after the last sentence that no sentence takes up complete with an empty transcript.
- **Per commit** (no VAD, or `turn_detection: null`): the appends since the last commit go into one session; commit
  answers `committed` at once and closes it, and the session's final completes the item (its text: the streaming
  model's transcript online, the sentences joined in 2pass). The partials before that are the item's deltas.
Audio times (`audio_start_ms`, `audio_end_ms`) count from the connection's first append, across sessions, and a
session's events go out only after the previous session's, so items complete in the order of their audio.

A settings change (`session.update`) applies from the next engine session: at once when none is open, else after
the next commit. Anything the client gets wrong is an `error` event and the connection stays up; a dropped
connection aborts its sessions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from app import auth
from app.protocols.openai_common import error_body, hotwords_for, realtime_mode, resolve_model
from engine import logs, metrics
from engine.errors import EngineError, SessionNotOpen, TooManySessions
from engine.events import Failure, Final, Partial, Sentence
from engine.feed import feed
from engine.messages import Mode, PipelineOptions, StreamOptions
from engine.service import Engine
from engine.sessions import Session, SessionState
from engine.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter()

RATE = 24_000  # OpenAI realtime's PCM rate
MIN_COMMIT_SAMPLES = RATE // 10  # OpenAI refuses a commit of less than 100 ms of audio


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


@dataclass(frozen=True)
class Config:
    """A connection's transcription settings, as the client set them (`model` as named) and as they take effect."""

    model: str = "parastream"  # echoed as the client named it
    pipeline: str = "parastream"  # openai_common.resolve_model's answer
    language: str | None = None
    prompt: str | None = None
    keywords: tuple[str, ...] = ()
    turn_detection: bool = True  # the client's wish; `vad` below is what it gets

    def mode(self, settings: Settings) -> Mode:
        return realtime_mode(self.pipeline, settings)

    def vad(self, settings: Settings) -> bool:
        """Items per sentence: turn detection asked for (OpenAI's default) and a VAD in the pipeline."""
        return self.turn_detection and self.mode(settings).sentences


@dataclass(frozen=True)
class Expired:
    """In the outbox after the last event: close the connection with this reason."""

    reason: str


class BadEvent(Exception):
    """A client event this server cannot act on; it becomes an `error` event."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


@dataclass(eq=False)  # hashed by identity: a connection keeps a set of them
class Segment:
    """One engine session of the connection, and the item its events currently feed."""

    session: Session
    base_ms: int  # the connection's audio time at the session's start
    per_sentence: bool
    item: str | None = None  # the item in progress (per commit: the session's one item)
    committed: bool = False  # per commit: `committed` was sent
    cleared: bool = False  # aborted by input_audio_buffer.clear: its end is no error
    relay: asyncio.Task[None] | None = field(default=None, repr=False)


class Connection:
    def __init__(
        self, websocket: WebSocket, engine: Engine, settings: Settings, beta: bool, owner: str | None = None
    ) -> None:
        self.ws = websocket
        self.owner = owner  # the key's identity its sessions belong to (app/auth.py)
        self.engine = engine
        self.settings = settings
        self.beta = beta  # `OpenAI-Beta: realtime=v1`: session events in the beta's shape
        self.id = _id("sess")
        self.config = Config()
        self.current: Segment | None = None  # the session taking appends
        self.segments: set[Segment] = set()  # every session not yet ended (committed ones still flush)
        self.samples = 0  # 24 kHz samples appended on this connection, cleared ones included: the audio clock
        self.last_item: str | None = None
        self.last_relay: asyncio.Task[None] | None = None  # the newest session's relay: the next one waits for it
        self.outbox: asyncio.Queue[dict[str, Any] | Expired] = asyncio.Queue()
        self.held = bytearray()  # appended by the client, not yet by us: the append rate's overflow (_flush)

    # --- the socket ---------------------------------------------------------------------------------------

    async def run(self, url_model: str | None) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            refused = self._set_url_model(url_model) if url_model else None
            self.send({"type": "session.created", "session": self.session_object()})
            if refused is not None:
                self.error(refused.message, refused.code, "model")
            while True:
                message = await self._receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    self.error("send client events as JSON text frames, not binary", "invalid_event")
                    continue
                await self.handle(text)
        except WebSocketDisconnect:
            return
        finally:
            for segment in list(self.segments):
                self._drop(segment)
            sender.cancel()

    async def _receive(self) -> Any:
        """The client's next message; meanwhile, audio _flush held back is appended when it is due."""
        while True:
            segment = self.current
            bucket = segment.session.appends if segment is not None else None
            if not self.held or bucket is None:
                return await self.ws.receive()
            try:
                return await asyncio.wait_for(self.ws.receive(), bucket.wait())
            except TimeoutError:
                try:
                    await self._flush()
                except EngineError as exc:
                    self._engine_error(exc, None)

    async def _send_loop(self) -> None:
        while True:
            event = await self.outbox.get()
            try:
                if isinstance(event, Expired):  # everything before it is out: now the close
                    await self.ws.close(1000, event.reason)
                    return
                await self.ws.send_text(json.dumps(event, ensure_ascii=False))
            except Exception:  # the client is gone: the receive loop ends the connection
                return

    def send(self, event: dict[str, Any]) -> None:
        self.outbox.put_nowait({"event_id": _id("event"), **event})

    def error(
        self, message: str, code: str, param: str | None = None, event_id: str | None = None, status: int = 400
    ) -> None:
        self.send({"type": "error", "error": {**error_body(status, code, message, param), "event_id": event_id}})

    def _set_url_model(self, model: str) -> EngineError | None:
        """The URL's `model` is, for OpenAI, the conversation model (gpt-realtime...): only one of our ids changes
        anything here, other names are ignored. Returns why an unknown id of ours was refused."""
        try:
            pipeline = resolve_model(model, self.settings)
        except EngineError as exc:
            return exc
        if model.startswith("parastream"):
            self.config = replace(self.config, model=model, pipeline=pipeline)
        return None

    # --- client events ------------------------------------------------------------------------------------

    async def handle(self, text: str) -> None:
        event_id: str | None = None
        try:
            try:
                event = json.loads(text)
            except json.JSONDecodeError as exc:
                raise BadEvent(f"the event is not JSON: {exc.msg}", "invalid_json") from None
            except (ValueError, RecursionError):  # a number of 4,300 digits or more; arrays nested past the stack
                raise BadEvent("the event is JSON this server cannot read: a number too long or nesting too deep", "invalid_json") from None
            if not isinstance(event, dict):
                raise BadEvent("an event is a JSON object with a `type`", "invalid_event")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            kind = event.get("type")
            if kind == "input_audio_buffer.append":
                await self.append(event.get("audio"))
            elif kind == "input_audio_buffer.commit":
                await self._flush()
                self.commit()
            elif kind == "input_audio_buffer.clear":
                self.clear()
            elif kind == "session.update":
                self.update(_object(event.get("session"), "session"), beta=False)
            elif kind == "transcription_session.update":
                self.update(_object(event.get("session"), "session"), beta=True)
            else:
                raise BadEvent(
                    f"unsupported event type {kind!r}: this server transcribes (session.update, "
                    "transcription_session.update, input_audio_buffer.append / commit / clear)",
                    "unsupported_event",
                    "type",
                )
        except BadEvent as exc:
            self.error(exc.message, exc.code, exc.param, event_id)
        except EngineError as exc:
            self._engine_error(exc, event_id)

    def _engine_error(self, exc: EngineError, event_id: str | None) -> None:
        # A limit (too many sessions for the key) is 429; the service full or shutting down 503: retry later.
        status = 429 if isinstance(exc, TooManySessions) else 503 if exc.retry_after_s else 400
        self.error(exc.message, exc.code, None, event_id, status)

    async def append(self, audio: object) -> None:
        if not isinstance(audio, str):
            raise BadEvent("input_audio_buffer.append needs `audio`: base64 PCM16", param="audio")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise BadEvent("`audio` is not valid base64", param="audio") from None
        if len(pcm) % 2:
            raise BadEvent("`audio` must be whole 16-bit samples (an even number of bytes)", param="audio")
        self.held += pcm
        await self._flush(wait=False)

    async def _flush(self, wait: bool = True) -> None:
        """Appends the audio held, at most PARASTREAM_MAX_APPENDS_PER_S times a second into one session. Past that rate
        nothing is refused: appends gather into a larger one (_receive comes back for it when it is due), and only
        PARASTREAM_MAX_APPEND_BYTES held waits, reading nothing meanwhile, so TCP slows the client down. `wait`:
        wait for the rate rather than hold (a commit appends what it commits)."""
        if not self.held:
            return
        segment = self._open_segment()
        bucket = segment.session.appends
        if bucket is not None and not await bucket.admit(len(self.held), 0 if wait else self.settings.max_append_bytes):
            return
        pcm = bytes(self.held)
        self.held.clear()
        for attempt in range(2):
            if attempt:
                segment = self._open_segment()
            try:
                await feed(self.engine, segment.session.id, pcm, len(pcm))
                break
            except SessionNotOpen:  # it ended meanwhile (idle timeout, failure): the audio goes into a new one
                if self.current is segment:
                    self.current = None
                if attempt:
                    raise
        self.samples += len(pcm) // 2

    def _open_segment(self) -> Segment:
        current = self.current
        if current is not None and current.session.state is SessionState.OPEN:
            return current
        config = self.config
        mode = config.mode(self.settings)
        hotwords = hotwords_for(config.prompt, config.keywords) if mode.sentences else ""
        session = self.engine.create_session(
            RATE, StreamOptions(), PipelineOptions(mode, hotwords), protocol="openai_realtime", owner=self.owner
        )
        segment = Segment(session, self.samples * 1000 // RATE, per_sentence=config.vad(self.settings))
        if not segment.per_sentence:
            segment.item = _id("item")
        segment.relay = asyncio.create_task(self._relay(segment, self.last_relay))
        self.last_relay = segment.relay
        self.current = segment
        self.segments.add(segment)
        return segment

    def commit(self) -> None:
        segment = self.current
        received = segment.session.samples_received if segment is not None else 0
        if segment is None or received < MIN_COMMIT_SAMPLES:
            raise BadEvent(
                f"buffer too small: expected at least 100ms of audio, but the buffer has {received * 1000 // RATE}ms",
                "input_audio_buffer_commit_empty",
            )
        self.current = None
        if not segment.per_sentence:
            self._committed(segment)
        # Per sentence: the close flushes the sentence in progress, whose events commit it.
        with contextlib.suppress(SessionNotOpen):
            self.engine.close(segment.session.id)

    def clear(self) -> None:
        self.held.clear()
        segment, self.current = self.current, None
        if segment is not None:
            segment.cleared = True
            self._drop(segment)
        self.send({"type": "input_audio_buffer.cleared"})

    def update(self, session: dict[str, Any], beta: bool) -> None:
        """Checks the whole update before applying any of it, then answers with the session as it now stands."""
        config = self.config
        if beta:
            self.beta = True
            fmt = session.get("input_audio_format")
            if fmt is not None and fmt != "pcm16":
                raise BadEvent(
                    f"input_audio_format {fmt!r} is not served: send pcm16 (24 kHz)", param="session.input_audio_format"
                )
            transcription = session.get("input_audio_transcription")
            has_turn_detection = "turn_detection" in session
            turn_detection = session.get("turn_detection")
            prefix = "session.input_audio_transcription"
        else:
            kind = session.get("type")
            if kind not in (None, "transcription"):
                raise BadEvent(
                    f"session.type {kind!r} is not served: this server transcribes (session.type 'transcription')",
                    param="session.type",
                )
            audio_input = _object(_object(session.get("audio"), "session.audio").get("input"), "session.audio.input")
            fmt = audio_input.get("format")
            if fmt is not None:
                fmt = _object(fmt, "session.audio.input.format")
                if fmt.get("type", "audio/pcm") != "audio/pcm" or fmt.get("rate", RATE) != RATE:
                    raise BadEvent("only audio/pcm at 24000 Hz is served", param="session.audio.input.format")
            transcription = audio_input.get("transcription")
            has_turn_detection = "turn_detection" in audio_input
            turn_detection = audio_input.get("turn_detection")
            prefix = "session.audio.input.transcription"
        if transcription is not None:
            t = _object(transcription, prefix)
            model = t.get("model", config.model)
            if not isinstance(model, str):
                raise BadEvent("model must be a string", param=f"{prefix}.model")
            try:
                pipeline = resolve_model(model, self.settings)
            except EngineError as exc:
                raise BadEvent(exc.message, exc.code, f"{prefix}.model") from None
            keywords = t.get("keywords", list(config.keywords))
            if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
                raise BadEvent("keywords must be a list of strings", param=f"{prefix}.keywords")
            language, prompt = t.get("language", config.language), t.get("prompt", config.prompt)
            for name, value in (("language", language), ("prompt", prompt)):
                if value is not None and not isinstance(value, str):
                    raise BadEvent(f"{name} must be a string", param=f"{prefix}.{name}")
            try:
                hotwords_for(prompt, keywords)  # a bad keyword list is refused now, not at the next append
            except EngineError as exc:
                raise BadEvent(exc.message, exc.code, f"{prefix}.keywords") from None
            config = replace(
                config, model=model, pipeline=pipeline, language=language, prompt=prompt, keywords=tuple(keywords)
            )
        if has_turn_detection:
            if turn_detection is not None:
                _object(turn_detection, "turn_detection")
            # Any kind (server_vad, semantic_vad) is the VAD's sentence ends; its tuning fields are not used.
            config = replace(config, turn_detection=turn_detection is not None)
        self.config = config
        kind = "transcription_session.updated" if beta else "session.updated"
        self.send({"type": kind, "session": self.session_object()})

    def session_object(self) -> dict[str, Any]:
        """The session as it takes effect (turn_detection null where there is no VAD), in the client's shape."""
        c = self.config
        transcription = {"model": c.model, "language": c.language, "prompt": c.prompt}
        turn_detection = {"type": "server_vad"} if c.vad(self.settings) else None
        if self.beta:
            return {
                "id": self.id,
                "object": "realtime.transcription_session",
                "input_audio_format": "pcm16",
                "input_audio_transcription": transcription,
                "turn_detection": turn_detection,
                "input_audio_noise_reduction": None,
                "modalities": ["text"],
                "client_secret": None,
            }
        return {
            "type": "transcription",
            "id": self.id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": RATE},
                    "transcription": {**transcription, "keywords": list(c.keywords)},
                    "turn_detection": turn_detection,
                    "noise_reduction": None,
                }
            },
            "include": [],
        }

    # --- engine events -> server events -------------------------------------------------------------------

    async def _relay(self, segment: Segment, previous: asyncio.Task[None] | None) -> None:
        """Relays the session's events once the previous session's are all out: sessions may run on different
        workers, and the one a commit closed is still flushing its last sentence when the next one starts."""
        try:
            if previous is not None:
                await asyncio.wait({previous})
            async for event in segment.session.follow():
                match event.payload:
                    case Partial(text=text) if text:
                        self._delta(segment, text)
                    case Sentence() as sentence if segment.per_sentence:
                        self._sentence(segment, sentence)
                    case Final(text=text, reason=reason):
                        if segment.per_sentence:
                            if segment.item is not None:  # deltas no sentence took up
                                self._committed(segment)
                                self._completed(segment.item, "", 0.0)
                                segment.item = None
                        else:
                            assert segment.item is not None
                            if not segment.committed:  # ended without a commit (the idle timeout)
                                self._committed(segment)
                            duration = segment.session.samples_received / RATE
                            self._completed(segment.item, text, duration)
                        if reason == "max_duration":
                            self._expire()
                    case Failure(code=code, message=message) if not segment.cleared:
                        if segment.item is not None:
                            self.send(
                                {
                                    "type": "conversation.item.input_audio_transcription.failed",
                                    "item_id": segment.item,
                                    "content_index": 0,
                                    "error": error_body(500, code.value, message),
                                }
                            )
                        self.error(f"transcription ended: {message}", code.value, status=500)
        except Exception:  # a relay must never take the connection down
            log.exception("realtime relay of session %s failed", segment.session.id, extra=logs.fields(segment.session))
        finally:
            self.segments.discard(segment)
            if self.current is segment:
                self.current = None

    def _expire(self) -> None:
        """The session lasted PARASTREAM_MAX_SESSION_S: its items are complete; an `error` (OpenAI's code for its own
        maximum duration), then the connection closes."""
        limit = self.settings.max_session_s
        self.error(f"the session reached its maximum duration, {limit:g} s (PARASTREAM_MAX_SESSION_S)", "session_expired")
        self.outbox.put_nowait(Expired(f"session_expired: a session may last {limit:g} s (PARASTREAM_MAX_SESSION_S)"))

    def _delta(self, segment: Segment, text: str) -> None:
        if segment.item is None:
            segment.item = _id("item")
        self.send(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": segment.item,
                "content_index": 0,
                "delta": text,
            }
        )

    def _sentence(self, segment: Segment, s: Sentence) -> None:
        item = segment.item or _id("item")
        segment.item = item
        self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": segment.base_ms + s.start_ms,
                "item_id": item,
            }
        )
        self.send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": segment.base_ms + s.end_ms, "item_id": item}
        )
        self._committed(segment)
        self._completed(item, s.text, (s.end_ms - s.start_ms) / 1000)
        segment.item = None  # the session's next deltas start the next item

    def _committed(self, segment: Segment) -> None:
        assert segment.item is not None
        self.send({"type": "input_audio_buffer.committed", "previous_item_id": self.last_item, "item_id": segment.item})
        self.last_item = segment.item
        segment.committed = True

    def _completed(self, item: str, transcript: str, seconds: float) -> None:
        self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item,
                "content_index": 0,
                "transcript": transcript,
                "usage": {"type": "duration", "seconds": round(seconds, 3)},
            }
        )

    def _drop(self, segment: Segment) -> None:
        """Abort a session nobody will hear the end of (the client cleared it, or went away)."""
        if segment.session.state.holds_resources:
            with contextlib.suppress(EngineError):
                self.engine.abort(segment.session.id)
        if segment.relay is not None and not segment.cleared:
            segment.relay.cancel()
        self.segments.discard(segment)


def _object(value: object, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadEvent(f"`{name}` must be an object", param=name)
    return value


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    """OpenAI's realtime transcription (module docstring). `intent` is not needed: every connection transcribes."""
    engine: Engine = websocket.app.state.engine
    settings: Settings = websocket.app.state.settings
    offered = websocket.scope.get("subprotocols") or []
    caller = auth.websocket_caller(websocket)  # OpenAI's SDK sends `Authorization: Bearer <api_key>`
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)  # browsers' JS SDK offers it
    if caller is None:  # an `error` event, as OpenAI sends for a wrong key, then the close (app/auth.py)
        error = {**error_body(401, "unauthorized", auth.UNAUTHORIZED), "event_id": None}
        await auth.refuse(websocket, json.dumps({"type": "error", "event_id": _id("event"), "error": error}))
        return
    beta = websocket.headers.get("openai-beta", "").startswith("realtime=v1")
    with metrics.websocket_connection("openai_realtime"):
        await Connection(websocket, engine, settings, beta, caller.owner).run(websocket.query_params.get("model"))
