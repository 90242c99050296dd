"""Per-session PCM ring buffers in `multiprocessing.shared_memory`.

The HTTP process writes a session's audio into its ring; the session's worker reads it from there. Only small
notifications cross the process boundary, never audio.

Byte layout of one segment (all integers little-endian, fields 8-byte aligned so each store is one machine word)::

    offset  size  field
    0       8     magic      b"PSRING01"
    8       8     capacity   ring size in samples (u64)
    16      8     write_pos  samples ever written (u64); only the writer (HTTP process) stores it
    24      8     read_pos   samples ever released (u64); only the reader (worker) stores it
    32      8     snapshot   generation of the session's current snapshot segment (u64, 0 = none; engine.worker.snapshot)
    40      24    reserved
    64      2*capacity  data: 16 kHz mono int16 samples; absolute sample p lives at 64 + 2 * (p % capacity)

Positions are absolute sample counts that only grow, so `write_pos - read_pos` is the number of samples held and
`capacity - (write_pos - read_pos)` is the free space. One writer and one reader per ring: the writer copies the
samples in and *then* stores `write_pos`; the reader copies samples out and *then* stores `read_pos`. On x86-64 (TSO)
stores become visible in program order, so a reader never sees a position ahead of its data.

When the ring is full: `RingWriter.write` refuses the whole append with `RingFull` (nothing is written, nothing is
dropped); the HTTP layer turns that into `429` with `Retry-After`. The reader releases samples only after it has
processed them *and* saved a snapshot of the session's state past them (`engine.worker.snapshot`), so the ring always
holds every sample a replacement worker needs to replay after a crash, and the writer can never overwrite audio
that a worker has yet to use.

Segment names are `parastream_<owner pid>_<token>`. The segments are deliberately *not* registered with Python's
`resource_tracker`: on Python 3.11 every process that merely attaches registers the name too, and its tracker would
unlink a live ring when that process exits, or warn about "leaks" that are not ours to clean. Ownership is explicit
instead: the HTTP process unlinks a ring when its session ends, `sweep_segments` removes every segment of this
process at shutdown, and at start-up removes segments whose owner process is gone (a previous instance that crashed).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

SEGMENT_PREFIX = "parastream_"
HEADER_BYTES = 64
MAGIC = b"PSRING01"
_SHM_DIR = "/dev/shm"
_NAME_RE = re.compile(rf"^{SEGMENT_PREFIX}(\d+)_[0-9a-f]+(?:_s\d+)?$")  # a ring, or a ring's snapshot (_s<gen>)


class RingFull(Exception):
    """The append does not fit; nothing was written."""

    def __init__(self, needed: int, free: int) -> None:
        super().__init__(f"ring full: {needed} samples do not fit in {free} free")
        self.needed = needed
        self.free = free


def buffer(shm: SharedMemory) -> memoryview:
    """The segment's bytes (typeshed allows None: after `close()`, which no caller reads past)."""
    buf = shm.buf
    assert buf is not None
    return buf


@contextlib.contextmanager
def _untracked() -> Iterator[None]:
    """Keep SharedMemory from registering with (or starting) a resource_tracker; see the module docstring."""
    register, unregister = resource_tracker.register, resource_tracker.unregister
    resource_tracker.register = resource_tracker.unregister = lambda *args, **kwargs: None
    try:
        yield
    finally:
        resource_tracker.register, resource_tracker.unregister = register, unregister


def new_segment_name(owner_pid: int | None = None) -> str:
    return f"{SEGMENT_PREFIX}{owner_pid or os.getpid()}_{secrets.token_hex(8)}"


def unlink_segment(name: str) -> bool:
    """Unlink a segment by name; True if it existed. Mappings already open stay valid until closed."""
    try:
        with _untracked():
            shm = SharedMemory(name=name)
            shm.close()
            shm.unlink()
        return True
    except FileNotFoundError:
        return False


def segment_exists(name: str) -> bool:
    return os.path.exists(os.path.join(_SHM_DIR, name))


def list_segments() -> list[str]:
    try:
        return sorted(n for n in os.listdir(_SHM_DIR) if _NAME_RE.match(n))
    except FileNotFoundError:  # pragma: no cover - no /dev/shm
        return []


def owned_bytes(owner_pid: int | None = None) -> int:
    """Sizes of this owner's segments: its rings and the snapshots workers save beside them (tmpfs allocates their
    pages as they are written, so the memory they hold can be less)."""
    prefix = f"{SEGMENT_PREFIX}{owner_pid or os.getpid()}_"
    total = 0
    for name in list_segments():
        if name.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):  # unlinked meanwhile
                total += os.stat(os.path.join(_SHM_DIR, name)).st_size
    return total


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_segments(owner_pid: int | None = None, *, stale_only: bool = False) -> list[str]:
    """Unlink this owner's segments (shutdown), or with `stale_only` every segment whose owner is dead (start-up)."""
    removed = []
    for name in list_segments():
        pid = int(_NAME_RE.match(name).group(1))  # type: ignore[union-attr]
        if (stale_only and not _pid_alive(pid)) or (not stale_only and pid == (owner_pid or os.getpid())):
            if unlink_segment(name):
                removed.append(name)
    return removed


class _Ring:
    """Shared mapping and header access common to both ends."""

    def __init__(self, shm: SharedMemory) -> None:
        self._shm = shm
        self.name: str = shm.name
        self._header = np.ndarray((HEADER_BYTES // 8,), dtype="<u8", buffer=shm.buf)
        self.capacity = int(self._header[1])
        self._data = np.ndarray((self.capacity,), dtype="<i2", buffer=shm.buf, offset=HEADER_BYTES)

    @property
    def write_pos(self) -> int:
        return int(self._header[2])

    @property
    def read_pos(self) -> int:
        return int(self._header[3])

    @property
    def snapshot_gen(self) -> int:
        return int(self._header[4])

    @property
    def used(self) -> int:
        return self.write_pos - self.read_pos

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def _copy(self, start: int, n: int) -> np.ndarray:
        """`n` samples from absolute position `start`, copied out (both ends read held audio: the reader to run it,
        the writer to replicate it); they must be held: read_pos <= start, end <= write_pos."""
        if n < 0 or start < self.read_pos or start + n > self.write_pos:
            raise ValueError(f"samples [{start}, {start + n}) are not held ({self.read_pos}..{self.write_pos})")
        head = start % self.capacity
        first = min(n, self.capacity - head)
        out = np.empty(n, dtype=np.int16)
        out[:first] = self._data[head : head + first]
        if first < n:
            out[first:] = self._data[: n - first]
        return out

    def close(self) -> None:
        # numpy views must go before the mapping can close (BufferError otherwise).
        del self._header, self._data
        self._shm.close()


class RingWriter(_Ring):
    """The HTTP process's end: creates, writes, and finally unlinks the segment."""

    @classmethod
    def create(
        cls, capacity_samples: int, name: str | None = None, *, start: int = 0, snapshot_gen: int = 0
    ) -> RingWriter:
        """A new, empty ring. `start` and `snapshot_gen`: for a session another node began (engine/cluster/), its
        positions go on from the snapshot it brings (installed as generation `snapshot_gen` beforehand)."""
        name = name or new_segment_name()
        with _untracked():
            shm = SharedMemory(name=name, create=True, size=HEADER_BYTES + 2 * capacity_samples)
        buffer(shm)[:8] = MAGIC
        header = np.ndarray((HEADER_BYTES // 8,), dtype="<u8", buffer=shm.buf)
        header[1:] = 0
        header[1] = capacity_samples
        header[2] = header[3] = start
        header[4] = snapshot_gen
        del header
        return cls(shm)

    def write(self, pcm: bytes | memoryview) -> int:
        """Append little-endian int16 samples; returns the new write position. Raises RingFull, writing nothing."""
        samples = np.frombuffer(pcm, dtype="<i2")
        n = len(samples)
        free = self.free
        if n > free:
            raise RingFull(n, free)
        start = self.write_pos
        head = start % self.capacity
        first = min(n, self.capacity - head)
        self._data[head : head + first] = samples[:first]
        if first < n:
            self._data[: n - first] = samples[first:]
        self._header[2] = start + n  # publish after the data (see module docstring)
        return start + n

    def copy(self, start: int, end: int) -> bytes:
        """Samples [start, end) as bytes, while they are held (engine/cluster/ replicates them to another node)."""
        return self._copy(start, end - start).tobytes()

    def unlink(self) -> None:
        """Unlink the ring and every snapshot segment of its session."""
        with contextlib.suppress(BufferError):
            self.close()
        unlink_segment(self.name)
        for name in list_segments():
            if name.startswith(f"{self.name}_s"):
                unlink_segment(name)


class RingReader(_Ring):
    """A worker's end: attaches, reads at absolute positions, releases what it has processed."""

    @classmethod
    def attach(cls, name: str) -> RingReader:
        with _untracked():
            shm = SharedMemory(name=name)
        if bytes(buffer(shm)[:8]) != MAGIC:
            shm.close()
            raise ValueError(f"segment {name} is not a Parastream ring")
        return cls(shm)

    def read(self, start: int, n: int) -> np.ndarray:
        """Copy `n` samples starting at absolute position `start` (must be held: read_pos <= start, end <= write)."""
        return self._copy(start, n)

    def publish_snapshot(self, generation: int) -> None:
        self._header[4] = generation

    def release(self, upto: int) -> None:
        """Give back every sample before absolute position `upto` to the writer."""
        if upto > self.read_pos:
            self._header[3] = upto
