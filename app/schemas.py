"""Request and response bodies of the HTTP API (they also document it in the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(16000, description="16000, or 8000 (resampled to 16 kHz on arrival)")
    chunk_size: list[int] = Field(
        default_factory=lambda: [0, 10, 5],
        description="FunASR chunk_size [left, stride, right] in 60 ms frames; stride 10 = 600 ms",
    )
    encoder_chunk_look_back: int = Field(4, description="Encoder chunks of attention history")
    decoder_chunk_look_back: int = Field(1, description="Decoder chunks of attention history")


class SessionInfo(BaseModel):
    id: str
    state: str = Field(description="open | closing | finished | failed | aborted")
    sample_rate: int
    chunk_size: list[int]
    encoder_chunk_look_back: int
    decoder_chunk_look_back: int
    samples_received: int = Field(description="Samples received so far, at the session's sample rate")
    samples_processed: int = Field(description="Samples the worker has transcribed, at the session's sample rate")
    worker: int | None = Field(description="Worker slot serving this session (null while it moves after a crash)")
    text: str = Field(description="Transcript so far")
    tokens: int = Field(description="Tokens so far")
    events: int = Field(description="Events emitted so far (the last event id)")
    close_reason: str | None = None
    restores: int = Field(0, description="Times the session was carried over to another worker after a crash")
    migrations: int = Field(0, description="Times the session was moved to another worker with its state (balancing)")


class MigrateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker: int | None = Field(None, ge=0, description="Target worker slot; by default the least-loaded other one")


class MigrateResult(BaseModel):
    id: str
    from_worker: int = Field(description="Worker the session is leaving")
    worker: int = Field(description="Worker it is moving to (GET shows it there once the move is done)")


class AppendResult(BaseModel):
    id: str
    samples_received: int = Field(description="Total samples received so far, at the session's sample rate")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
