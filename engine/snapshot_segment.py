"""The byte layout of a session's snapshot segment, and the raw reads and writes both sides of it need.

A worker writes a snapshot after every non-final stride (`engine.worker.snapshot` pickles the state; this module
only moves its bytes). The API process reads the latest one raw, without unpickling it and without torch, to
replicate it to another node (engine/cluster/), and writes one raw on the node that takes the session over.

Segment layout (`<ring name>_s<generation>`; little-endian u64 fields)::

    0   8  magic      b"PSSNAP04"
    8   8  slot_size  bytes available to one snapshot's pickle
    16  8  active     which slot holds the latest complete snapshot (0 or 1)
    24  8  saves      snapshots published so far (a reader's torn-read check)
    32  32 reserved
    64     slot 0: length, processed_pos, token_count (u64 each) + the pickle, up to slot_size bytes
    64 + 24 + slot_size   slot 1, likewise

Writes go to the slot that is *not* active, and `active` flips (then `saves` counts it) only after the write is
complete, so a worker that dies mid-write leaves the previous snapshot intact. A reader copies the active slot and
then reads `saves` again: if it has not moved, the copy is whole. (Once one more snapshot is published, the writer
may already be writing the next into the slot being copied, so any change means the copy may be torn; a stride
takes far longer than a copy, so a retry at the next stride succeeds.)
`processed_pos` and `token_count` sit beside the pickle so that the API process can tell, without unpickling, which
stride a snapshot ends at.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from engine.ring import _untracked, buffer

MAGIC = b"PSSNAP04"
HEADER_BYTES = 64
SLOT_HEADER_BYTES = 24
MIN_SLOT_BYTES = 1 << 20
HEADROOM = 2  # a slot holds twice the first snapshot: the FunASR cache grows over a session's first strides


@dataclass(frozen=True)
class RawSnapshot:
    """A snapshot's pickle with the position it covers, as the API process handles it (never unpickled there)."""

    processed_pos: int
    token_count: int
    blob: bytes


def segment_name(ring_name: str, generation: int) -> str:
    return f"{ring_name}_s{generation}"


class SnapshotSegment:
    """One generation's segment: two slots and the header that says which one is current."""

    def __init__(self, shm: SharedMemory) -> None:
        self.shm = shm

    @classmethod
    def create(cls, name: str, first_blob_bytes: int) -> SnapshotSegment:
        slot_size = max(MIN_SLOT_BYTES, HEADROOM * first_blob_bytes)
        with _untracked():
            shm = SharedMemory(name=name, create=True, size=HEADER_BYTES + 2 * (SLOT_HEADER_BYTES + slot_size))
        buffer(shm)[:8] = MAGIC
        segment = cls(shm)
        header = segment._header()
        header[1], header[2], header[3] = slot_size, 0, 0
        return segment

    @classmethod
    def attach(cls, name: str) -> SnapshotSegment:
        with _untracked():
            shm = SharedMemory(name=name)
        if bytes(buffer(shm)[:8]) != MAGIC:
            shm.close()
            raise ValueError(f"segment {name} is not a Parastream snapshot of this version")
        return cls(shm)

    @property
    def slot_size(self) -> int:
        return int(self._header()[1])

    @property
    def saves(self) -> int:
        return int(self._header()[3])

    def fits(self, blob: bytes) -> bool:
        return len(blob) <= self.slot_size

    def publish(self, snapshot: RawSnapshot, *, first: bool = False) -> None:
        """Write into the inactive slot (slot 0 of a new segment), then make it the active one."""
        header = self._header()
        slot = 0 if first else 1 - int(header[2])
        offset = self._slot_offset(slot)
        fields = np.ndarray((3,), dtype="<u8", buffer=buffer(self.shm), offset=offset)
        fields[:] = (len(snapshot.blob), snapshot.processed_pos, snapshot.token_count)
        del fields
        start = offset + SLOT_HEADER_BYTES
        buffer(self.shm)[start : start + len(snapshot.blob)] = snapshot.blob
        header[2] = slot  # publish: only now is the new snapshot the one a restore reads
        header[3] = int(header[3]) + 1

    def read(self) -> RawSnapshot | None:
        """The active snapshot, copied; None if none was published, or if it was overwritten while being copied."""
        header = self._header()
        before = int(header[3])
        if before == 0:
            return None
        offset = self._slot_offset(int(header[2]))
        length, processed_pos, token_count = (
            int(v) for v in np.ndarray((3,), dtype="<u8", buffer=buffer(self.shm), offset=offset)
        )
        start = offset + SLOT_HEADER_BYTES
        blob = bytes(buffer(self.shm)[start : start + length])
        if int(header[3]) != before:
            return None  # maybe torn: see the module docstring
        return RawSnapshot(processed_pos, token_count, blob)

    def read_blob(self) -> memoryview:
        """The active slot's pickle in place (the worker unpickles it; nothing writes while it does)."""
        offset = self._slot_offset(int(self._header()[2]))
        length = int(np.ndarray((1,), dtype="<u8", buffer=buffer(self.shm), offset=offset)[0])
        start = offset + SLOT_HEADER_BYTES
        return buffer(self.shm)[start : start + length]

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.shm.close()

    def _header(self) -> np.ndarray:
        return np.ndarray((HEADER_BYTES // 8,), dtype="<u8", buffer=buffer(self.shm))

    def _slot_offset(self, slot: int) -> int:
        return HEADER_BYTES + slot * (SLOT_HEADER_BYTES + self.slot_size)


def read_latest(ring_name: str, generation: int) -> RawSnapshot | None:
    """The latest snapshot of a session whose ring header names `generation` (0: none yet), or None."""
    if not generation:
        return None
    try:
        segment = SnapshotSegment.attach(segment_name(ring_name, generation))
    except (FileNotFoundError, ValueError):
        return None  # moved to a newer generation meanwhile, or the session ended
    try:
        return segment.read()
    finally:
        segment.close()


def install(ring_name: str, generation: int, snapshot: RawSnapshot) -> None:
    """Write `snapshot` as generation `generation` of a session's segment (a node taking a session over); the caller
    then publishes the generation in the ring header, where the worker that restores the session finds it."""
    segment = SnapshotSegment.create(segment_name(ring_name, generation), len(snapshot.blob))
    try:
        segment.publish(snapshot, first=True)
    finally:
        segment.close()
