"""OpenAI's speech-to-text REST API: `GET /v1/models` and `POST /v1/audio/transcriptions` (plain and `stream=true`).

A transcription is an ordinary engine session: the file is decoded (app/audio_file.py: any rate and channel count,
to 16 kHz mono), fed in with engine.feed (waiting for ring room, as a server-held source does), closed, and its
typed events are followed to the end (Session.follow). The session's mode is the best pipeline the service has
(openai_common.transcription_mode): offline (VAD + offline model + punctuation) where those models are configured, so
that a long file goes through the VAD sentence by sentence; otherwise online (the streaming model). Responses are
made from the events by app/protocols/openai_formats.py; `stream=true` relays them as they come.

Errors have OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`, openai_common.error_body) so that its
SDK raises a readable APIStatusError; the status codes are Parastream's (app/errors.py), but 422 becomes OpenAI's 400.
Choices on each field are in docs/openai.md and next to the code that makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from app.audio_file import UndecodableAudio, decode_audio
from app.auth import CallerDep, require_key
from app.deps import get_engine, get_settings
from app.errors import STATUS, HTTPError
from app.protocols import openai_formats as formats
from app.protocols.openai_common import (
    error_body,
    error_response,
    hotwords_for,
    model_ids,
    resolve_model,
    transcription_mode,
)
from engine import metrics
from engine.errors import EngineError
from engine.events import ErrorCode, Failure, Final, Partial, Payload, Sentence
from engine.feed import feed
from engine.messages import PipelineOptions, StreamOptions
from engine.service import Engine
from engine.sessions import Session
from engine.settings import Settings
from engine.units import SAMPLE_RATE

MIN_AUDIO_SAMPLES = SAMPLE_RATE // 10  # OpenAI refuses audio under 0.1 s ("audio_too_short"); so do we
CREATED = int(time.time())  # the `created` of every model /v1/models lists: when this process started


class OpenAIRoute(APIRoute):
    """Answers every error of these endpoints in OpenAI's shape, whatever raised it: the engine, the HTTP layer,
    FastAPI's validation. (Parastream's own endpoints keep app/errors.py's shape.)"""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except EngineError as exc:
                status = exc.status if isinstance(exc, HTTPError) else STATUS.get(type(exc), 400)
                details = dict(exc.details)
                param = details.pop("param", None)
                response = error_response(
                    _openai_status(status), exc.code, exc.message, exc.retry_after_s, param=param, **details
                )
                response.headers.update(getattr(exc, "headers", {}))  # a 401's WWW-Authenticate (app/auth.py)
                return response
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
                message = f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid')}"
                return error_response(400, "invalid_request", message, param=".".join(loc) or None)
            except StarletteHTTPException as exc:
                return error_response(exc.status_code, "http_error", str(exc.detail))

        return route


def _openai_status(status: int) -> int:
    return 400 if status == 422 else status  # OpenAI answers a bad parameter with 400, never 422


# A key where keys are set: `Authorization: Bearer`, as OpenAI's SDK sends its api_key (app/auth.py).
router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute, dependencies=[Depends(require_key)])

EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": '`{"error": {"message", "type", "param", "code"}}`'}
    for status in (400, 404, 413, 415, 500, 503)
}


# --- models -------------------------------------------------------------------------------------------------


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": "parastream"}


@router.get("/models", responses=ERRORS)
async def list_models(settings: SettingsDep) -> dict[str, Any]:
    """The model ids the transcription endpoints take: `parastream` (the best pipeline served), `parastream-online`
    (the streaming model), `parastream-offline` (VAD + offline model, where configured), and OpenAI's names, which
    mean `parastream` (docs/openai.md)."""
    return {"object": "list", "data": [_model(m) for m in model_ids(settings)]}


@router.get("/models/{model_id:path}", responses=ERRORS)
async def retrieve_model(model_id: str, settings: SettingsDep) -> dict[str, Any]:
    if model_id not in model_ids(settings):
        raise HTTPError(
            404, "model_not_found", f"the model `{model_id}` is not listed; GET /v1/models lists them", param="model"
        )
    return _model(model_id)


# --- transcriptions -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """The form fields, checked. Fields OpenAI has that change nothing here are accepted and ignored: `temperature`
    (Paraformer decodes greedily), `include[]` (no logprobs), `chunking_strategy` (offline mode always cuts at the
    VAD's sentence ends, which is what OpenAI's `auto` does)."""

    model: str
    language: str
    hotwords: str
    response_format: str
    stream: bool
    words: bool


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPError(400, "invalid_value", f"`{name}` must be a text field, not a file", param=name)
    return value


def _list(form: FormData, name: str) -> list[str]:
    """An array field as OpenAI's SDK sends it (`name[]`, repeated), or as curl users write it (`name`)."""
    values = [*form.getlist(name + "[]"), *form.getlist(name)]
    if not all(isinstance(v, str) for v in values):
        raise HTTPError(400, "invalid_value", f"`{name}[]` must be text fields", param=name)
    return [str(v) for v in values]


def _params(form: FormData, settings: Settings) -> Params:
    model = resolve_model(_field(form, "model"), settings)
    # `language`: the model is Chinese Paraformer, which decodes what it hears whatever is asked; refusing other
    # languages would break clients that always send one (often "en"). Accepted, and reported in verbose_json.
    language = (_field(form, "language") or "").strip() or "zh"
    response_format = _field(form, "response_format") or "json"
    if response_format not in formats.RESPONSE_FORMATS:
        raise HTTPError(
            400,
            "invalid_value",
            f"response_format must be one of {', '.join(formats.RESPONSE_FORMATS)}, not `{response_format}`",
            param="response_format",
        )
    stream_field = (_field(form, "stream") or "false").strip().lower()
    if stream_field not in ("true", "false", "1", "0"):
        raise HTTPError(400, "invalid_value", "stream must be true or false", param="stream")
    temperature = _field(form, "temperature")
    if temperature is not None:
        try:
            float(temperature)
        except ValueError:
            raise HTTPError(400, "invalid_value", "temperature must be a number", param="temperature") from None
    granularities = _list(form, "timestamp_granularities")
    if set(granularities) - {"word", "segment"}:
        raise HTTPError(
            400,
            "invalid_value",
            "timestamp_granularities[] takes `word` and `segment`",
            param="timestamp_granularities",
        )
    # prompt -> hotwords at best, keywords[] and the `hotwords` extension strictly (openai_common's docstring says why)
    hotwords = hotwords_for(_field(form, "prompt"), _list(form, "keywords"), _field(form, "hotwords"))
    return Params(model, language, hotwords, response_format, stream_field in ("true", "1"), "word" in granularities)


async def _read_form(request: Request, limit: int) -> FormData:
    """The multipart body, parsed as it arrives (the file spools to disk past 1 MB), refused with 413 as soon as it
    passes `limit` bytes: by its Content-Length before reading anything, or while reading a chunked one."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with the audio in a `file` part, as OpenAI's API takes; got {content_type or 'none'}",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)

    async def limited() -> AsyncGenerator[bytes, None]:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            yield chunk

    try:
        return await MultiPartParser(request.headers, limited(), max_files=4, max_fields=64).parse()
    except MultiPartException as exc:
        raise HTTPError(400, "invalid_multipart", f"the multipart body does not parse: {exc.message}") from exc


def _too_large(limit: int) -> HTTPError:
    metrics.reject("payload_too_large")
    return HTTPError(
        413,
        "payload_too_large",
        f"the upload is over {limit} bytes (PARASTREAM_MAX_UPLOAD_BYTES)",
        param="file",
        limit=limit,
    )


async def _decode(form: FormData) -> npt.NDArray[np.int16]:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPError(
            400, "invalid_value", "`file` is required: the audio file, as a multipart file part", param="file"
        )
    try:
        pcm = await asyncio.to_thread(decode_audio, upload.file, SAMPLE_RATE)  # decoding and resampling take a while: off the loop
    except UndecodableAudio as exc:
        raise HTTPError(415, "unsupported_audio_format", str(exc), param="file") from exc
    if len(pcm) < MIN_AUDIO_SAMPLES:
        raise HTTPError(
            400,
            "audio_too_short",
            f"the audio is {len(pcm) / SAMPLE_RATE:.3f} s long; at least 0.1 s is needed",
            param="file",
        )
    return pcm


@router.post(
    "/audio/transcriptions",
    responses={
        **ERRORS,
        200: {
            "description": "json / verbose_json: a JSON object; text / srt / vtt: text/plain; "
            "stream=true: text/event-stream of transcript.text.delta events, then transcript.text.done",
        },
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "model": {"type": "string", "default": "parastream"},
                            "language": {"type": "string"},
                            "prompt": {"type": "string"},
                            "keywords[]": {"type": "array", "items": {"type": "string"}},
                            "response_format": {"type": "string", "enum": list(formats.RESPONSE_FORMATS)},
                            "temperature": {"type": "number"},
                            "timestamp_granularities[]": {
                                "type": "array",
                                "items": {"type": "string", "enum": ["word", "segment"]},
                            },
                            "stream": {"type": "boolean"},
                        },
                    }
                }
            },
        }
    },
)
async def create_transcription(request: Request, engine: EngineDep, settings: SettingsDep, caller: CallerDep) -> Response:
    """OpenAI's `audio.transcriptions.create`. The file may be WAV, FLAC, OGG, MP3... at any rate and channel count
    (415 for what cannot be decoded); it is transcribed by the best pipeline served, or the one `model` names."""
    form = await _read_form(request, settings.max_upload_bytes)
    try:
        params = _params(form, settings)
        pcm = await _decode(form)
    finally:
        await form.close()
    mode = transcription_mode(params.model, settings)
    options = StreamOptions()  # the REST API's defaults: chunk_size [0, 10, 5], look-backs 4 and 1
    pipeline = PipelineOptions(mode, params.hotwords)
    session = engine.create_session(SAMPLE_RATE, options, pipeline, protocol="openai", owner=caller.owner)
    run = _Run(engine, session, pcm.tobytes(), settings.max_append_bytes)
    if params.stream:
        # Every model streams, whisper-1 too (OpenAI ignores stream=true for whisper-1): a client that asks for a
        # stream can read one. response_format does not apply to a stream.
        return EventSourceResponse(
            _sse(run),
            ping=settings.sse_ping_s,
            send_timeout=settings.sse_send_timeout_s,
            background=BackgroundTask(run.finish),  # a client gone before the stream began leaves nothing open
        )
    events = await _unless_disconnected(request, run)
    if events is None:
        return Response(status_code=499)  # nobody is listening; the session was aborted
    final = events[-1]
    if isinstance(final, Failure):
        raise _failure_error(final)
    assert isinstance(final, Final)
    t = formats.transcript(final.text, events, len(pcm) / SAMPLE_RATE, options.stride_samples, SAMPLE_RATE)
    match params.response_format:
        case "json":
            return JSONResponse(formats.as_json(t))
        case "verbose_json":
            return JSONResponse(formats.as_verbose_json(t, params.language, params.words))
        case "srt":
            return PlainTextResponse(formats.as_srt(t))
        case "vtt":
            return PlainTextResponse(formats.as_vtt(t))
    return PlainTextResponse(formats.as_text(t))


class _Run:
    """One upload's session: feeds the audio, closes, and yields the session's events up to the terminal one. Leaving
    early (a client gone, an error) aborts the session, so nothing is transcribed for nobody."""

    def __init__(self, engine: Engine, session: Session, pcm: bytes, piece_bytes: int) -> None:
        self.engine = engine
        self.session = session
        self.pcm = pcm
        self.piece_bytes = piece_bytes

    async def _feed(self) -> None:
        try:
            await feed(self.engine, self.session.id, self.pcm, self.piece_bytes)
            self.engine.close(self.session.id)
        except EngineError:  # the session ended meanwhile (failed, shutting down): its terminal event says why
            self.abort()

    def abort(self) -> None:
        if self.session.state.holds_resources:
            self.engine.abort(self.session.id)

    async def finish(self) -> None:
        """abort(), as a coroutine: Starlette would run a plain function in a thread, away from the engine's loop."""
        self.abort()

    async def events(self) -> AsyncGenerator[Payload, None]:
        feeding = asyncio.create_task(self._feed())
        try:
            async for event in self.session.follow():
                yield event.payload
            await feeding
        finally:
            feeding.cancel()
            self.abort()


async def _unless_disconnected(request: Request, run: _Run) -> list[Payload] | None:
    """Every event of the run, or None if the client went away first (the run is then aborted)."""

    async def collect() -> list[Payload]:
        async with contextlib.aclosing(run.events()) as events:
            return [payload async for payload in events]

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":  # the body is read: only a disconnect comes
            pass

    collecting = asyncio.create_task(collect())
    watching = asyncio.create_task(disconnected())
    try:
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not collecting.done():
            collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collecting  # runs the run's cleanup: the session is aborted
    return collecting.result() if not collecting.cancelled() else None


def _failure_error(failure: Failure) -> HTTPError:
    # The session failed on the server's side: shutting down is worth a retry elsewhere or later (503); a worker
    # that died or a model that raised is a server error (500), which OpenAI's SDK retries too.
    if failure.code in (ErrorCode.SHUTDOWN, ErrorCode.ABORTED):
        return HTTPError(503, failure.code.value, failure.message, retry_after_s=5)
    return HTTPError(500, failure.code.value, failure.message)


async def _sse(run: _Run) -> AsyncIterator[ServerSentEvent]:
    """`transcript.text.delta` per piece of text as it is decoded (online: a stride's partial; offline: a sentence),
    then `transcript.text.done` with the whole transcript. No `event:` names and no ids: OpenAI's SDK reads the type
    from the data, and an id would make its decoder take keep-alive comments for empty events."""
    async with contextlib.aclosing(run.events()) as events:
        async for payload in events:
            match payload:
                case Partial(text=text) | Sentence(text=text) if text:
                    yield _data({"type": "transcript.text.delta", "delta": text})
                case Final(text=text):
                    yield _data({"type": "transcript.text.done", "text": text})
                case Failure():
                    error = _failure_error(payload)
                    yield _data({"error": error_body(error.status, error.code, error.message)})


def _data(body: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(body, ensure_ascii=False))
