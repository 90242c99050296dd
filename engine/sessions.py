"""A session as the API process sees it: its ring, counters, transcript, and the event log subscribers read.

Events get ids 1, 2, 3, ... in the order they happen. The log is what makes SSE resume work: a subscriber that
reconnects with `Last-Event-ID: n` reads from event n+1 on, then waits for live ones. Any number of subscribers read
the same log; none of them can slow the others or grow memory, because each holds only its own position (a
subscriber that stops reading is cut off by the SSE send timeout and resumes from the log). The log keeps the last
`PARASTREAM_EVENT_HISTORY` events; a resume point older than that is reported as a gap, never silently skipped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum

from engine.audio import Resampler
from engine.events import TERMINAL, Payload, Sentence
from engine.limits import TokenBucket
from engine.messages import PipelineOptions, StreamOptions
from engine.ring import RingWriter
from engine.units import SAMPLE_RATE

# Appends whose arrival a session remembers (Session.note_arrival): past it the oldest are forgotten, so a session
# whose strides or sentences lag far behind reports a latency too low rather than growing without bound.
MAX_ARRIVALS = 4096


class SessionState(str, Enum):
    OPEN = "open"  # taking audio
    CLOSING = "closing"  # closed by the client or idle timeout; the worker is flushing
    FINISHED = "finished"  # final event sent
    FAILED = "failed"  # error event sent (worker died, inference failed, shutdown)
    ABORTED = "aborted"  # DELETE
    MOVED = "moved"  # handed off to another node in a drain (engine/cluster/): its subscribers reconnect there

    @property
    def holds_resources(self) -> bool:
        return self in (SessionState.OPEN, SessionState.CLOSING)


@dataclass(frozen=True)
class Event:
    id: int
    payload: Payload

    @property
    def terminal(self) -> bool:
        return isinstance(self.payload, TERMINAL)


@dataclass
class Session:
    id: str
    options: StreamOptions
    sample_rate: int
    ring: RingWriter | None
    state: SessionState = SessionState.OPEN
    samples_received: int = 0  # at the client's sample rate
    processed_pos: int = 0  # 16 kHz samples the worker has processed
    tokens: list[str] = field(default_factory=list)
    stride_texts: list[str] = field(default_factory=list)  # each partial's text, in order
    pipeline: PipelineOptions = PipelineOptions()
    protocol: str = "rest"  # the door it came in by: rest | funasr_ws | openai | openai_realtime (metrics, logs)
    owner: str | None = None  # who may see it: the creating API key's identity (app/auth.py), never the key itself
    sentences: list[Sentence] = field(default_factory=list)  # 2pass/offline: each sentence, in order
    transcript: str | None = None  # the final's whole-session text
    close_reason: str = ""
    end_pos: int | None = None  # ring position at close: the final step covers audio up to here
    restores: int = 0  # times the session was carried over to another worker after a crash
    migrations: int = 0  # times it was moved to another worker while healthy (load balancing, operator)
    created_at: float = field(default_factory=time.monotonic)
    last_audio_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    appends: TokenBucket | None = None  # PARASTREAM_MAX_APPENDS_PER_S (engine/limits.py); None: unlimited
    resampler: Resampler | None = None  # to 16 kHz, for a session at another rate (engine/audio.py)
    # In a cluster (engine/cluster/): samples in the last replica, which a client need not keep (None: without a
    # cluster, every sample received); and whether the session is being handed off (appends wait meanwhile).
    samples_durable: int | None = None
    handing_off: bool = False
    history: int = 1000  # events kept for resume
    events: list[Event] = field(default_factory=list)
    dropped: int = 0  # events trimmed from the front of the log; event id i sits at events[i - 1 - dropped]
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    # (ring position after an append, when it was written), oldest first: when the audio of a stride or a sentence
    # arrived, for the latency metrics. Trimmed as strides and sentences are heard (`forget_arrivals`), and capped.
    _arrivals: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=MAX_ARRIVALS))

    @property
    def ring_pos(self) -> int:
        return self.ring.write_pos if self.ring else 0

    @property
    def samples_processed(self) -> int:
        """Processed audio at the client's rate (the worker counts 16 kHz samples). Capped at what was received: a
        24 kHz client's last 16 kHz sample can stand for one or two of its samples."""
        return min(self.samples_received, self.processed_pos * self.sample_rate // SAMPLE_RATE)

    def add_stride(self, tokens: tuple[str, ...], text: str) -> None:
        self.tokens.extend(tokens)
        self.stride_texts.append(text)

    @property
    def text(self) -> str:
        """The transcript so far: the final's once there is one, else the partials' texts joined, or in 2pass/offline
        mode the sentences' (built only when asked, so a stride's cost does not grow with the transcript)."""
        if self.transcript is not None:
            return self.transcript
        if self.pipeline.mode.sentences:
            return "".join(s.text for s in self.sentences)
        return "".join(self.stride_texts)

    @property
    def transcript_tokens(self) -> tuple[str, ...]:
        """The tokens the transcript is made of: the partials' in online mode, the sentences' otherwise."""
        if self.pipeline.mode.sentences:
            return tuple(token for s in self.sentences for token in s.tokens)
        return tuple(self.tokens)

    def note_arrival(self, ring_pos: int, at: float) -> None:
        self._arrivals.append((ring_pos, at))

    def arrival(self, ring_pos: int) -> float | None:
        """When the audio up to `ring_pos` was all in the ring: the time of the first append that reached it."""
        for end, at in self._arrivals:
            if end >= ring_pos:
                return at
        return None

    def forget_arrivals(self, before: int) -> None:
        """No stride or sentence still to come ends at or before `before`."""
        while len(self._arrivals) > 1 and self._arrivals[0][0] < before:
            self._arrivals.popleft()

    @property
    def last_event_id(self) -> int:
        return self.dropped + len(self.events)

    def emit(self, payload: Payload) -> Event:
        event = Event(self.last_event_id + 1, payload)
        self.events.append(event)
        if len(self.events) > 2 * self.history:  # trim in batches: amortised O(1) per event
            cut = len(self.events) - self.history
            del self.events[:cut]
            self.dropped += cut
        self._wake()
        return event

    def advance(self, processed_pos: int) -> None:
        """The worker processed up to `processed_pos`; progress subscribers hear of it even without tokens."""
        self.processed_pos = processed_pos
        self._wake()

    def _wake(self) -> None:
        # Wake every waiting subscriber, then re-arm for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def ended(self) -> bool:
        return bool(self.events) and self.events[-1].terminal

    def move_away(self) -> None:
        """Handed off to another node: subscribers stop here, without an ending, and resume there."""
        self.state = SessionState.MOVED
        self._wake()

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """Every event with id > `after` as it comes, up to and including the terminal one (for protocols that
        relay a whole session; a resuming subscriber uses `events_after` and `dropped`)."""
        while True:
            events = await self.events_after(after)
            for event in events:
                yield event
                after = event.id
                if event.terminal:
                    return
            if not events and self.state is SessionState.MOVED:
                return

    async def events_after(self, last_id: int, processed_seen: int | None = None) -> list[Event]:
        """Events with id > last_id still in the log, waiting for at least one unless the log has ended. With
        `processed_seen`, also return (maybe with no event) as soon as the processed count differs from it."""
        while self.last_event_id <= last_id and not self.ended and self.state is not SessionState.MOVED:
            if processed_seen is not None and self.samples_processed != processed_seen:
                break
            await self._changed.wait()
        return self.events[max(0, last_id - self.dropped) :]
