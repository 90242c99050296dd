"""Server-side audio sources: a protocol that holds the audio itself (a WebSocket client that sends faster than real
time, an uploaded file) appends it here and waits for room, where a REST client would be told 429 and retry.

The waiting is on the session's own progress (a processed stride, an event), never a timer: a worker that catches up
frees the ring, and the append is retried at once.
"""

from __future__ import annotations

import asyncio

from engine.errors import BufferFull
from engine.service import Engine
from engine.sessions import Session
from engine.units import SAMPLE_RATE

# A wait that saw no progress wakes after this long and retries anyway (a restore after a crash rewrites the
# session's state without an event).
_RECHECK_S = 0.5


async def feed(engine: Engine, session_id: str, pcm: bytes, piece_bytes: int) -> Session:
    """Append all of `pcm` (whole 16-bit samples) in pieces of at most `piece_bytes`, each as soon as the session's
    ring has room. Raises what `Engine.append` raises but BufferFull: SessionNotOpen once the session ended (aborted,
    failed), NotReady while the server drains, SessionNotFound after an abort."""
    session = engine.get(session_id)
    if session.ring is not None:  # a piece must fit in the ring: at most half of it, at the client's rate
        piece_bytes = min(piece_bytes, session.ring.capacity * session.sample_rate // SAMPLE_RATE)
    piece_bytes -= piece_bytes % 2
    view = memoryview(pcm)
    for start in range(0, len(pcm), piece_bytes):
        piece = bytes(view[start : start + piece_bytes])
        while True:
            try:
                session = engine.append(session_id, piece)
                break
            except BufferFull:
                waiting = session.events_after(session.last_event_id, session.samples_processed)
                try:
                    await asyncio.wait_for(waiting, _RECHECK_S)
                except TimeoutError:
                    pass
    return session
