"""The transcript event stream of a session (Server-Sent Events through sse-starlette).

Events: `partial` (a stride's new tokens and their text: a partial's size does not grow with the session), then
one `final` (all tokens, the whole transcript, and why it ended) or one `error`. Ids count up from 1 per session. With `?progress=true` a subscriber also gets
`progress` events (`samples_processed`) for strides that produced no tokens; they carry no id, so that every
subscriber sees the same gap-free id sequence and resume points mean the same for all. A resume point older than
the retained history (`PARASTREAM_EVENT_HISTORY`) gets one id-less `gap` event saying how many events are gone. A client that reconnects with `Last-Event-ID: n`
gets every event after n, then the live ones; after the terminal event the stream ends. Keep-alive pings and a send
timeout keep dead connections from piling up.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.auth import events_access
from app.deps import get_engine, get_settings
from app.errors import HTTPError
from app.routes.sessions import ERRORS
from app.schemas import GapData, ProgressData, TranscriptEvent, event_data
from engine.events import Final, Partial
from engine.service import Engine
from engine.sessions import Session, SessionState
from engine.settings import Settings

# A key where keys are set (Bearer, or ?api_key= for EventSource), and the session must be the caller's (app/auth.py).
router = APIRouter(prefix="/v1/sessions", tags=["events"], dependencies=[Depends(events_access)])


@router.get(
    "/{session_id}/events",
    responses={
        **ERRORS,
        200: {
            "model": TranscriptEvent,
            "content": {"text/event-stream": {}},
            "description": "partial, final, error (and progress, gap) events; the model is each event's `data:`",
        },
    },
)
async def session_events(
    session_id: str,
    engine: Annotated[Engine, Depends(get_engine)],
    settings: Annotated[Settings, Depends(get_settings)],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    progress: bool = False,
) -> EventSourceResponse:
    session = engine.get(session_id)
    after = _parse_last_event_id(last_event_id)
    return EventSourceResponse(
        _stream(session, after, progress),
        ping=settings.sse_ping_s,
        send_timeout=settings.sse_send_timeout_s,
    )


def _parse_last_event_id(value: str | None) -> int:
    if value is None or value == "":
        return 0
    # ASCII digits only, and few: str.isdigit() takes "²", which int() refuses, and int() refuses 4,300 digits or more.
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise HTTPError(400, "invalid_last_event_id", "Last-Event-ID must be an event id this stream sent (an integer)")
    return int(value)


async def _stream(session: Session, after: int, progress: bool) -> AsyncIterator[ServerSentEvent]:
    seen = session.samples_processed if progress else None
    if after < session.dropped:  # say plainly that part of what the client asks for is gone
        gap = GapData(missed=session.dropped - after, first_available_id=session.dropped + 1)
        yield ServerSentEvent(_json(gap), event="gap")
    while True:
        events = await session.events_after(after, seen)
        for event in events:
            kind, data = event_data(event.payload)
            yield ServerSentEvent(_json(data), event=kind, id=str(event.id))
            if progress and isinstance(event.payload, (Partial, Final)):
                seen = event.payload.samples_processed
        if events:
            after = events[-1].id
        if (session.ended or session.state is SessionState.MOVED) and after >= session.last_event_id:
            return  # moved: the client reconnects with Last-Event-ID and reaches the node that has it now
        if progress and session.samples_processed != seen:
            seen = session.samples_processed
            yield ServerSentEvent(_json(ProgressData(samples_processed=seen)), event="progress")


def _json(data: BaseModel) -> str:
    # Text as UTF-8, not \u escapes: a partial's text is most of its bytes, and CJK escaped is three times larger.
    return json.dumps(data.model_dump(), ensure_ascii=False)
