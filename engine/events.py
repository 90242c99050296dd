"""What the engine tells the world about a session: typed events, and read-only views of sessions and workers.

Every protocol in `app/` (REST with SSE today; FunASR's WebSocket and OpenAI's API next) maps these to its own wire
format; the engine never builds a wire payload. Events are appended to the session's log in order and numbered
there (engine/sessions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ErrorCode(str, Enum):
    """Why a session ended with an error."""

    INFERENCE_FAILED = "inference_failed"  # the model raised on this session's audio
    WORKER_DIED = "worker_died"  # its worker died and it could not be restored
    SHUTDOWN = "shutdown"  # the server is shutting down
    ABORTED = "aborted"  # deleted by its client


@dataclass(frozen=True)
class Partial:
    """One stride's new tokens and their text (never the whole transcript: its size stays flat)."""

    tokens: tuple[str, ...]
    text: str
    samples_processed: int  # at the session's sample rate


@dataclass(frozen=True)
class Sentence:
    """A 2pass/offline session's sentence: the VAD found its end (or the session closed inside it), the offline model
    decoded its audio again and the punctuation model punctuated it. Times are ms of the session's audio."""

    index: int  # 0, 1, 2, ... within the session
    text: str  # punctuated
    tokens: tuple[str, ...]  # the offline model's tokens
    start_ms: int  # the VAD's start of speech
    end_ms: int  # the VAD's end of speech (where the audio ended, if the close cut the sentence)
    timestamps: tuple[tuple[int, int], ...]  # per token [start_ms, end_ms], where the offline model gives them
    audio_start_ms: int  # the audio decoded: from the VAD's start with FunASR's pre-roll...
    audio_end_ms: int  # ...to the end of the 60 ms frame the VAD found the end in


@dataclass(frozen=True)
class Final:
    """The session's end: every token and the whole transcript (in 2pass/offline mode: its sentences', joined)."""

    tokens: tuple[str, ...]
    text: str
    reason: str  # why it was closed: "closed" (the client) | "idle_timeout" | "max_duration"
    samples_processed: int


@dataclass(frozen=True)
class Failure:
    code: ErrorCode
    message: str


Payload = Partial | Sentence | Final | Failure
TERMINAL = (Final, Failure)


@dataclass(frozen=True)
class SessionView:
    """A session as it stands (a copy: reading it changes nothing and holds nothing)."""

    id: str
    state: str  # engine.sessions.SessionState's value
    mode: str  # engine.messages.Mode's value
    hotwords: str
    sample_rate: int
    chunk_size: tuple[int, int, int]
    encoder_chunk_look_back: int
    decoder_chunk_look_back: int
    samples_received: int
    samples_processed: int
    worker: int | None  # None while it is between workers
    text: str
    tokens: int
    sentences: int
    events: int  # the last event id
    close_reason: str | None
    restores: int
    migrations: int


@dataclass(frozen=True)
class WorkerView:
    """A worker slot as it stands: its process, its placed sessions, and what it last reported."""

    slot: int
    pid: int | None
    generation: int
    device: str
    cpus: tuple[int, ...]
    ready: bool
    halted: bool
    restarts: int
    sessions: int  # placed on it by the API process
    cache_bytes: int | None  # the rest: from its last pong
    worker_sessions: int | None
    strides: int | None
