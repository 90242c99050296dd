"""The engine's errors. The HTTP layer maps each to one status code; none of them is a server fault."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error a client can cause or must wait out."""

    code = "engine_error"

    def __init__(self, message: str, *, retry_after_s: float | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.details = details


class EngineBootError(RuntimeError):
    """The service cannot start (the model did not load). The message is for the operator."""


class SessionNotFound(EngineError):
    code = "session_not_found"


class SessionNotOpen(EngineError):
    """Audio or close for a session that was closed, aborted or has failed."""

    code = "session_not_open"


class InvalidAudio(EngineError):
    code = "invalid_audio"


class BufferFull(EngineError):
    """The session's ring has no room for this append; retry after the worker catches up."""

    code = "buffer_full"


class ServiceFull(EngineError):
    """`PARASTREAM_MAX_SESSIONS` sessions are open."""

    code = "service_full"


class NotReady(EngineError):
    """No worker can take a session now (still loading, restarting, halted, or shutting down)."""

    code = "not_ready"


class SessionElsewhere(EngineError):
    """The session is another node's (engine/cluster/): alive there, being handed over, or for another model."""

    code = "session_elsewhere"


class InvalidOptions(EngineError):
    """Session options FunASR cannot run with (chunk_size, sample_rate, look-backs)."""

    code = "invalid_options"


class OffsetGap(EngineError):
    """An append whose `offset` is past the end of the audio received: applying it would leave a hole."""

    code = "offset_gap"


class MigrationInFlight(EngineError):
    """A session move is under way; one move at a time (each waits for its worker's current stride)."""

    code = "migration_in_flight"


class InvalidWorker(EngineError):
    """A migration target that is no worker slot, or the slot the session is already on."""

    code = "invalid_worker"


class TooManySessions(EngineError):
    """The caller's API key holds `PARASTREAM_MAX_SESSIONS_PER_KEY` open sessions."""

    code = "too_many_sessions"


class RateLimited(EngineError):
    """More appends to one session than `PARASTREAM_MAX_APPENDS_PER_S`; nothing was written."""

    code = "rate_limited"
