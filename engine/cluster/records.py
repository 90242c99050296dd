"""What a node writes to Redis about a session, and how those records are encoded.

Keys (all under `PARASTREAM_CLUSTER_PREFIX`, default `parastream:`)::

    node:<node>           the node's heartbeat (expires after PARASTREAM_CLUSTER_NODE_TTL_S unless renewed)
    session:<id>          hash: node (owner), state (live | released | ended), meta, replica
    events:<id>           list: the session's events, oldest first (event id i is element i - 1)

`meta` is written once, when the session is created: its options, sample rate, protocol and owner. `replica` is
rewritten every PARASTREAM_CLUSTER_REPLICATE_STRIDES strides: the worker's last snapshot (raw, as the worker
pickled it), the audio in the ring after it, and the API process's counters at that moment, so a node that takes
the session over has exactly what this one had, up to `samples_received`. Events are appended as they are
replicated, never rewritten.

Records are pickles: the snapshot inside is one anyway (the worker unpickles it). So Redis is inside the service's
trust boundary, like the nodes' own shared memory: bind it to a private network and set a password
(docs/cluster.md).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from enum import Enum
from typing import Any

from engine.audio import Resampler
from engine.events import Payload
from engine.messages import PipelineOptions, StreamOptions
from engine.snapshot_segment import RawSnapshot

FORMAT = 1  # bumped when a record's shape changes: a node refuses a record it cannot read


class RecordState(str, Enum):
    LIVE = "live"  # its node serves it; another node takes it over only once that node's heartbeat is gone
    RELEASED = "released"  # its node handed it off (drain): the first node asked takes it over at once
    ENDED = "ended"  # final or error sent: kept for PARASTREAM_FINISHED_SESSION_TTL_S so late readers get its end


@dataclass(frozen=True)
class SessionMeta:
    """What a session was created with; the same for its whole life."""

    options: StreamOptions
    sample_rate: int
    pipeline: PipelineOptions
    protocol: str
    owner: str | None
    ring_capacity: int
    model: str  # a node serving another model must not carry the session on (its snapshot means nothing there)
    format: int = FORMAT


@dataclass(frozen=True)
class Replica:
    """A session's state on its node at one moment, consistent with the events replicated with it.

    `snapshot` covers the ring up to `snapshot.processed_pos` (the node had heard every stride up to there: its
    tokens are in the events), `tail` is the 16 kHz audio from there to the ring's end, and `samples_received` and
    `resampler` are the API process's state after that audio. None of it: a session that had no stride yet."""

    samples_received: int
    snapshot: RawSnapshot | None
    tail: bytes
    resampler: Resampler | None
    events: int  # events up to and including this replica

    @property
    def processed_pos(self) -> int:
        return self.snapshot.processed_pos if self.snapshot is not None else 0


def dump(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def load_meta(data: bytes) -> SessionMeta:
    meta = pickle.loads(data)
    if not isinstance(meta, SessionMeta) or meta.format != FORMAT:
        raise ValueError("the session's record was written by another version of Parastream")
    return meta


def load_replica(data: bytes) -> Replica:
    replica = pickle.loads(data)
    if not isinstance(replica, Replica):
        raise ValueError("the session's replica was written by another version of Parastream")
    return replica


def load_event(data: bytes) -> Payload:
    payload: Payload = pickle.loads(data)
    return payload
