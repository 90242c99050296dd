"""Session snapshots in shared memory: what lets a replacement worker carry on a session exactly.

After every non-final stride, the worker pickles the session's state (the FunASR cache with its tensors as numpy
arrays, the ring position it covers, how many tokens the session has, and the last stride's tokens) into the
session's snapshot segment, and only *then* releases the ring up to that position. So at any moment the snapshot plus the audio still in the ring is everything the session needs.

Why only the last stride's tokens: the API process has heard every token up to the stride before the snapshot's (a
worker sends a stride's result right after saving its snapshot, and what it sent before dying is still delivered),
so a restore gets the older tokens from the API process (`RestoreSession.tokens`), and a snapshot's size and cost
stay flat over a session's life instead of growing with its transcript. When a worker dies,
another one loads the snapshot and replays the ring from the snapshot's position: the strides it computes are the
ones the dead worker would have computed, with the same state, so the transcript is identical.

The segment's byte layout (two slots, an `active` index flipped only after a write is complete, so a worker that
dies mid-write leaves the previous snapshot intact) is `engine.snapshot_segment`'s, which the API process also reads
to replicate a snapshot to another node. A snapshot too big for its slot moves the session to a new, larger segment
(the next generation): it is written there first, then published in the ring header (offset 32), then the old
segment is unlinked. The API process owns the segments' names and unlinks them with the ring.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.ring import RingReader, segment_exists, unlink_segment
from engine.snapshot_segment import RawSnapshot, SnapshotSegment, segment_name

_NUMPY_DTYPES = frozenset(
    {torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool}
)


@dataclass(frozen=True)
class Snapshot:
    processed_pos: int  # ring position the state covers: replay starts here
    token_count: int  # tokens the session had produced up to `processed_pos`
    last_tokens: tuple[str, ...]  # the tokens of the stride that ended at `processed_pos` (the last of those)
    cache: dict[str, Any]
    sentences: Any = None  # a 2pass/offline session's sentence path (engine.worker.core.SentenceProgress)


@dataclass(frozen=True)
class PackedTensor:
    """A tensor as a numpy array: pickling a torch tensor goes through `torch.save` into a zip archive per storage,
    which made a large-model snapshot cost ~8 ms; a numpy array pickles as one copy of its elements. A view is
    stored compact (only the elements it shows), which also drops the slack FunASR's sliced caches keep alive."""

    array: np.ndarray
    device: str


def pack(obj: Any) -> Any:
    """The cache with every CPU/GPU tensor of a numpy-representable dtype replaced by a `PackedTensor`."""
    if isinstance(obj, torch.Tensor):
        if obj.dtype in _NUMPY_DTYPES:
            return PackedTensor(obj.detach().cpu().numpy(), str(obj.device))
        return obj  # (bfloat16 and the like: torch's own pickling)
    if isinstance(obj, dict):
        return {key: pack(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [pack(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(pack(value) for value in obj)
    return obj


def unpack(obj: Any) -> Any:
    if isinstance(obj, PackedTensor):
        array = obj.array if obj.array.flags.writeable else obj.array.copy()
        tensor = torch.from_numpy(array)
        return tensor if obj.device == "cpu" else tensor.to(obj.device)
    if isinstance(obj, dict):
        return {key: unpack(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [unpack(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(unpack(value) for value in obj)
    return obj


class SnapshotStore:
    """One session's snapshots, written by the worker that serves it."""

    def __init__(self, ring: RingReader) -> None:
        self.ring = ring
        self.generation = ring.snapshot_gen
        self._segment: SnapshotSegment | None = None
        if self.generation:  # carrying on after a restore: keep writing where the last worker did
            self._segment = SnapshotSegment.attach(segment_name(ring.name, self.generation))

    def save(
        self,
        processed_pos: int,
        token_count: int,
        last_tokens: tuple[str, ...],
        cache: dict[str, Any],
        sentences: Any = None,
    ) -> None:
        state = (processed_pos, token_count, tuple(last_tokens), pack(cache), pack(sentences))
        snapshot = RawSnapshot(processed_pos, token_count, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
        if self._segment is None or not self._segment.fits(snapshot.blob):
            self._move_to_new_segment(snapshot)
            return
        self._segment.publish(snapshot)

    def load(self) -> Snapshot | None:
        if self._segment is None or not self._segment.saves:
            return None
        processed_pos, count, last, cache, sentences = pickle.loads(self._segment.read_blob())
        return Snapshot(processed_pos, count, last, unpack(cache), unpack(sentences))

    def close(self) -> None:
        if self._segment is not None:
            self._segment.close()
            self._segment = None

    def _move_to_new_segment(self, snapshot: RawSnapshot) -> None:
        old = self._segment
        generation = self.generation + 1
        self._segment = SnapshotSegment.create(segment_name(self.ring.name, generation), len(snapshot.blob))
        self._segment.publish(snapshot, first=True)
        self.ring.publish_snapshot(generation)  # a restore now finds the new segment
        if old is not None:
            old.close()
            unlink_segment(segment_name(self.ring.name, self.generation))
        self.generation = generation
        if not segment_exists(self.ring.name):
            # The session was aborted while this stride ran: the API process unlinked its ring, and then every snapshot
            # segment there was, so this one would outlive the session. (The ring goes before the snapshots are listed,
            # and this segment is made before the ring is looked for: one side always sees the other's.)
            unlink_segment(segment_name(self.ring.name, generation))
