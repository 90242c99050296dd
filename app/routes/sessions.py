"""REST endpoints of a session: create, append audio, close, abort, inspect."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from app.auth import SessionCallerDep, require_admin, session_access
from app.body import read_pcm_body
from app.cluster_headers import SESSION_HEADER
from app.deps import get_engine, get_settings
from app.schemas import AppendResult, ErrorResponse, MigrateRequest, MigrateResult, SessionCreate, SessionInfo
from engine.hotwords import normalize_hotwords
from engine.messages import Mode, PipelineOptions
from engine.service import Engine, validate_options
from engine.settings import Settings

# Every route needs a key where keys are set, and one that names a session answers 404 unless it is the caller's
# (app/auth.py).
router = APIRouter(prefix="/v1/sessions", tags=["sessions"], dependencies=[Depends(session_access)])

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 409, 413, 415, 422, 429, 503)
}

EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


@router.post("", status_code=201, response_model=SessionInfo, responses=ERRORS)
async def create_session(
    engine: EngineDep,
    caller: SessionCallerDep,
    response: Response,
    body: Annotated[SessionCreate | None, Body()] = None,
) -> SessionInfo:
    """Open a session on the least-loaded worker. 503 with Retry-After when PARASTREAM_MAX_SESSIONS are open; 422
    for a mode the service has no models for."""
    body = body or SessionCreate()
    options = validate_options(body.chunk_size, body.encoder_chunk_look_back, body.decoder_chunk_look_back)
    mode = Mode(body.mode) if body.mode is not None else engine.default_mode()
    pipeline = PipelineOptions(mode, normalize_hotwords(body.hotwords))
    session = await engine.open_session(body.sample_rate, options, pipeline, owner=caller.owner)
    response.headers[SESSION_HEADER] = session.id  # a load balancer's stick table learns the session here
    return SessionInfo.from_view(engine.view(session.id))


@router.get("/{session_id}", response_model=SessionInfo, responses=ERRORS)
async def get_session(session_id: str, engine: EngineDep) -> SessionInfo:
    return SessionInfo.from_view(engine.view(session_id))


@router.post(
    "/{session_id}/audio",
    response_model=AppendResult,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "Little-endian 16-bit mono PCM at the session's sample rate; any whole number of samples.",
        }
    },
)
async def append_audio(
    session_id: str,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    offset: Annotated[
        int | None,
        Query(ge=0, description="Sample index of the body's first sample; makes a retried append safe"),
    ] = None,
) -> dict[str, object]:
    """Append raw PCM. 429 with Retry-After when the session's buffer is full, or past PARASTREAM_MAX_APPENDS_PER_S
    appends a second (`rate_limited`); nothing is written then.

    With `?offset=`, audio already received is acknowledged without being applied twice, and an offset past the end
    is refused with 409 `offset_gap` and `expected_offset`. The answer always gives `samples_received`, the end
    offset, so a client that lost an answer knows where to resume."""
    engine.admit_append(engine.get(session_id))  # 404 and 429 before reading a body we would throw away
    body = await read_pcm_body(request, settings.max_append_bytes)
    session = engine.append(session_id, body, offset)
    return {"id": session.id, "samples_received": session.samples_received, "samples_durable": engine.durable(session)}


@router.post("/{session_id}/close", response_model=SessionInfo, responses=ERRORS)
async def close_session(
    session_id: str,
    engine: EngineDep,
    offset: Annotated[
        int | None,
        Query(ge=0, description="The client's end offset: 409 `offset_gap` if the session has received less"),
    ] = None,
) -> SessionInfo:
    """Flush the remaining audio with is_final; a `final` event follows on the event stream. With `?offset=` (the
    samples the client sent), a session carried on by another node from an older replica asks for the rest first
    (409 `offset_gap` with `expected_offset`), so that no audio is lost to a node's crash (docs/cluster.md)."""
    engine.close(session_id, offset=offset)
    return SessionInfo.from_view(engine.view(session_id))


@router.post(
    "/{session_id}/migrate",
    status_code=202,
    response_model=MigrateResult,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],  # after the router's: another key's session is 404, not 403
)
async def migrate_session(
    session_id: str, engine: EngineDep, body: Annotated[MigrateRequest | None, Body()] = None
) -> dict[str, object]:
    """Operators: move an open session to another worker between two strides, with its state (the transcript does
    not change). 202: the move has started; GET shows the new `worker` once it is done. 409 `migration_in_flight`
    while another move is under way, 409 `session_not_open` unless open, 422 `invalid_worker`."""
    body = body or MigrateRequest()
    source = engine.view(session_id).worker
    target = engine.start_migration(session_id, body.worker)
    return {"id": session_id, "from_worker": source, "worker": target}


@router.delete("/{session_id}", status_code=204, responses=ERRORS)
async def abort_session(session_id: str, engine: EngineDep) -> Response:
    """Abort the session now and free everything it holds; subscribers get an `error` event (code `aborted`)."""
    engine.abort(session_id)
    return Response(status_code=204)
