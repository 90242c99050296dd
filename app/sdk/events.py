"""Typed transcript events, parsed from the `data:` of the service's Server-Sent Events (docs/api.md).

Each event is a frozen dataclass with its stream `id` (1, 2, 3, ... per session; 0 for the id-less `gap`), so
`isinstance` or `match` picks what a caller needs:

- `PartialEvent`: a 600 ms stride of the streaming model produced tokens (`text` is that stride's text only).
- `SentenceEvent`: 2pass and offline modes: a sentence ended and was decoded again (punctuated, with times).
- `FinalEvent`: the session ended normally; `text` is the whole transcript. Always the last event.
- `ErrorEvent`: the session ended otherwise (`worker_died`, `inference_failed`, `aborted`, `shutdown`). Last too.
- `GapEvent`: a resume point older than the history the service keeps; `missed` events are gone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, TypeAlias


@dataclass(frozen=True)
class PartialEvent:
    """New tokens of one stride of the streaming model. Join the partials' texts for a running transcript."""

    id: int
    tokens: tuple[str, ...]
    text: str
    samples_processed: int  # audio transcribed so far, at the session's sample rate
    type: ClassVar[Literal["partial"]] = "partial"


@dataclass(frozen=True)
class SentenceEvent:
    """A finished sentence, decoded again by the offline model (2pass and offline modes). It replaces the partials
    of the same stretch of audio. Times are ms of the session's audio."""

    id: int
    index: int
    text: str
    tokens: tuple[str, ...]
    start_ms: int  # the speech the VAD found
    end_ms: int
    timestamps: tuple[tuple[int, int], ...]  # [start_ms, end_ms] per token; () when the model gives none
    audio_start_ms: int  # the audio decoded (with pre-roll)
    audio_end_ms: int
    type: ClassVar[Literal["sentence"]] = "sentence"


@dataclass(frozen=True)
class FinalEvent:
    """The session ended normally (`reason`: `closed`, `idle_timeout` or `max_duration`): the whole transcript,
    post-processed once over all tokens. In 2pass and offline modes the text is the sentences joined."""

    id: int
    tokens: tuple[str, ...]
    text: str
    reason: str
    samples_processed: int
    type: ClassVar[Literal["final"]] = "final"


@dataclass(frozen=True)
class ErrorEvent:
    """The session ended abnormally; no final event follows."""

    id: int
    code: str  # worker_died | inference_failed | aborted | shutdown
    message: str
    type: ClassVar[Literal["error"]] = "error"


@dataclass(frozen=True)
class GapEvent:
    """Events the service no longer keeps were asked for (a resume point older than PARASTREAM_EVENT_HISTORY)."""

    missed: int
    first_available_id: int
    id: int = 0
    type: ClassVar[Literal["gap"]] = "gap"


Event: TypeAlias = PartialEvent | SentenceEvent | FinalEvent | ErrorEvent | GapEvent
TERMINAL = ("final", "error")


def parse_event(kind: str, event_id: int, data: dict[str, Any]) -> Event | None:
    """The typed event of one SSE message; None for kinds this SDK does not know (newer servers may add some)."""
    if kind == "partial":
        return PartialEvent(event_id, tuple(data["tokens"]), data["text"], int(data["samples_processed"]))
    if kind == "sentence":
        return SentenceEvent(
            event_id,
            int(data["index"]),
            data["text"],
            tuple(data["tokens"]),
            int(data["start_ms"]),
            int(data["end_ms"]),
            tuple((int(a), int(b)) for a, b in data.get("timestamps", ())),
            int(data.get("audio_start_ms", data["start_ms"])),
            int(data.get("audio_end_ms", data["end_ms"])),
        )
    if kind == "final":
        return FinalEvent(event_id, tuple(data["tokens"]), data["text"], data["reason"], int(data["samples_processed"]))
    if kind == "error":
        return ErrorEvent(event_id, data["code"], data["message"])
    if kind == "gap":
        return GapEvent(int(data["missed"]), int(data["first_available_id"]))
    return None


def event_to_dict(event: Event) -> dict[str, Any]:
    """`{"event": kind, "id": n, ...fields}`: the JSON shape of `parastream transcribe --format json`."""
    fields = asdict(event)
    return {"event": event.type, "id": fields.pop("id"), **fields}
