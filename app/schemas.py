"""Request, response and event bodies of the HTTP API (they also document it in the OpenAPI schema).

The engine's typed events and read-only views (engine/events.py) become wire payloads here, and only here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from engine.events import Failure, Final, Partial, Payload, Sentence, SessionView, WorkerView


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(16000, description="16000, 8000 or 24000 (resampled to 16 kHz on arrival)")
    chunk_size: list[int] = Field(
        default_factory=lambda: [0, 10, 5],
        description="FunASR chunk_size [left, stride, right] in 60 ms frames; stride 10 = 600 ms",
    )
    encoder_chunk_look_back: int = Field(4, description="Encoder chunks of attention history")
    decoder_chunk_look_back: int = Field(1, description="Decoder chunks of attention history")
    mode: Literal["online", "2pass", "offline"] | None = Field(
        None,
        description=(
            "online: partials only. 2pass: partials plus a corrected, punctuated `sentence` per VAD-ended sentence. "
            "offline: sentences only. Default: 2pass where the service has sentence models (PARASTREAM_VAD_MODEL, "
            "PARASTREAM_OFFLINE_MODEL), else online; 2pass and offline are refused (400) without them."
        ),
    )
    hotwords: str | None = Field(
        None,
        max_length=16384,
        description=(
            'Words to bias the offline model toward: space-separated ("阿里巴巴 达摩院") or FunASR clients\' JSON '
            'object of word to weight (\'{"阿里巴巴": 20}\'); weights are accepted and ignored, as in FunASR\'s '
            "Python path. Only the sentences (the offline model) use them."
        ),
    )


class SessionInfo(BaseModel):
    id: str
    state: str = Field(description="open | closing | finished | failed | aborted")
    mode: str = Field(description="online | 2pass | offline")
    hotwords: str = Field(description="The hotwords as the offline model takes them: space-separated, weights dropped")
    sample_rate: int
    chunk_size: list[int]
    encoder_chunk_look_back: int
    decoder_chunk_look_back: int
    samples_received: int = Field(description="Samples received so far, at the session's sample rate")
    samples_processed: int = Field(description="Samples the worker has transcribed, at the session's sample rate")
    worker: int | None = Field(description="Worker slot serving this session (null while it moves after a crash)")
    text: str = Field(description="Transcript so far (2pass and offline: the sentences so far)")
    tokens: int = Field(description="Tokens of that transcript")
    sentences: int = Field(description="Sentences so far (2pass and offline)")
    events: int = Field(description="Events emitted so far (the last event id)")
    close_reason: str | None = None
    restores: int = Field(0, description="Times the session was carried over to another worker after a crash")
    migrations: int = Field(0, description="Times the session was moved to another worker with its state (balancing)")

    @classmethod
    def from_view(cls, view: SessionView) -> SessionInfo:
        return cls(
            id=view.id, state=view.state, mode=view.mode, hotwords=view.hotwords, sample_rate=view.sample_rate,
            chunk_size=list(view.chunk_size),
            encoder_chunk_look_back=view.encoder_chunk_look_back, decoder_chunk_look_back=view.decoder_chunk_look_back,
            samples_received=view.samples_received, samples_processed=view.samples_processed, worker=view.worker,
            text=view.text, tokens=view.tokens, sentences=view.sentences, events=view.events,
            close_reason=view.close_reason,
            restores=view.restores, migrations=view.migrations,
        )


class WorkerInfo(BaseModel):
    slot: int
    pid: int | None
    generation: int = Field(description="Incarnation of the slot's worker; it grows by one each time it is replaced")
    device: str
    cpus: list[int]
    ready: bool
    halted: bool = Field(description="Failed to boot PARASTREAM_MAX_BOOT_FAILURES times in a row; not respawned")
    restarts: int
    sessions: int = Field(description="Sessions placed on it")
    cache_bytes: int | None = Field(description="Bytes of model cache it holds, from its last liveness reply")
    worker_sessions: int | None = Field(description="Sessions it holds, from its last liveness reply")
    strides: int | None = Field(description="Strides it has computed, from its last liveness reply")

    @classmethod
    def from_view(cls, view: WorkerView) -> WorkerInfo:
        return cls(
            slot=view.slot, pid=view.pid, generation=view.generation, device=view.device, cpus=list(view.cpus),
            ready=view.ready, halted=view.halted, restarts=view.restarts, sessions=view.sessions,
            cache_bytes=view.cache_bytes, worker_sessions=view.worker_sessions, strides=view.strides,
        )


class Readiness(BaseModel):
    ready: bool
    workers: list[WorkerInfo]
    reason: str | None = Field(description="Why the service cannot serve, when it cannot")


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
    samples_durable: int = Field(
        description=(
            "Samples the service keeps even if its node is lost: a client may forget the audio before this offset "
            "and must keep what follows to replay it (docs/cluster.md). Without a cluster, equal to samples_received."
        )
    )


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- the event stream (SSE `data:` of each event type) -----------------------------------------------------------


class PartialData(BaseModel):
    """`event: partial`: one stride's new tokens and their text; a client joins the texts for the transcript."""

    tokens: list[str]
    text: str
    samples_processed: int = Field(description="Samples transcribed so far, at the session's sample rate")


class SentenceData(BaseModel):
    """`event: sentence` (2pass and offline): a sentence the VAD ended, decoded again by the offline model and
    punctuated. In 2pass mode it replaces the partials' text of the same stretch of audio."""

    index: int = Field(description="0, 1, 2, ... within the session")
    text: str = Field(description="The sentence, punctuated where the service has a punctuation model")
    tokens: list[str] = Field(description="The offline model's tokens")
    start_ms: int = Field(description="Start of speech the VAD found, in ms of the session's audio")
    end_ms: int = Field(description="End of speech the VAD found (where the audio ended, if the close cut it)")
    timestamps: list[list[int]] = Field(
        description="Per token [start_ms, end_ms] in the session's audio, where the offline model gives them, else []"
    )
    audio_start_ms: int = Field(description="The audio the offline model decoded: from the VAD's start with pre-roll")
    audio_end_ms: int = Field(description="...to the end of the 60 ms frame the VAD found the end in")


class FinalData(BaseModel):
    """`event: final`: the last event of a session that ended well."""

    tokens: list[str] = Field(description="Every token of the transcript (2pass and offline: the sentences')")
    text: str = Field(description="The whole transcript (2pass and offline: the sentences joined)")
    reason: str = Field(description="closed | idle_timeout | max_duration (PARASTREAM_MAX_SESSION_S)")
    samples_processed: int


class ErrorData(BaseModel):
    """`event: error`: the last event of a session that ended badly."""

    code: Literal["inference_failed", "worker_died", "shutdown", "aborted"]
    message: str


class ProgressData(BaseModel):
    """`event: progress` (no id; only with `?progress=true`): audio was transcribed without new tokens."""

    samples_processed: int


class GapData(BaseModel):
    """`event: gap` (no id): the resume point is older than the history kept (PARASTREAM_EVENT_HISTORY)."""

    code: Literal["history_lost"] = "history_lost"
    missed: int
    first_available_id: int


class TranscriptEvent(RootModel[PartialData | SentenceData | FinalData | ErrorData | ProgressData | GapData]):
    """The `data:` of an event on /v1/sessions/{id}/events; the SSE `event:` field names its type."""


def event_data(payload: Payload) -> tuple[str, BaseModel]:
    """The SSE event type and `data:` body of an engine event."""
    match payload:
        case Partial():
            return "partial", PartialData(
                tokens=list(payload.tokens), text=payload.text, samples_processed=payload.samples_processed
            )
        case Sentence():
            return "sentence", SentenceData(
                index=payload.index, text=payload.text, tokens=list(payload.tokens), start_ms=payload.start_ms,
                end_ms=payload.end_ms, timestamps=[list(pair) for pair in payload.timestamps],
                audio_start_ms=payload.audio_start_ms, audio_end_ms=payload.audio_end_ms,
            )
        case Final():
            return "final", FinalData(
                tokens=list(payload.tokens), text=payload.text, reason=payload.reason,
                samples_processed=payload.samples_processed,
            )
        case Failure():
            return "error", ErrorData(code=payload.code.value, message=payload.message)
    raise TypeError(f"no wire format for {payload!r}")
