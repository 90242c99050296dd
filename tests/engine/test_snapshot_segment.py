"""The snapshot segment's raw side (engine/snapshot_segment.py): what the API process reads and installs without
unpickling, and the torn-read check that keeps a replica from copying a slot the worker is rewriting."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine import snapshot_segment
from engine.ring import RingReader, RingWriter
from engine.snapshot_segment import RawSnapshot, SnapshotSegment, install, read_latest, segment_name


def test_latest_snapshot_is_read_raw_with_its_position() -> None:
    ring = RingWriter.create(1000)
    try:
        assert read_latest(ring.name, 0) is None  # no stride yet
        segment = SnapshotSegment.create(segment_name(ring.name, 1), 100)
        segment.publish(RawSnapshot(9600, 3, b"first"), first=True)
        assert read_latest(ring.name, 1) == RawSnapshot(9600, 3, b"first")
        segment.publish(RawSnapshot(19200, 5, b"second, longer"))  # into the other slot, then flipped
        assert read_latest(ring.name, 1) == RawSnapshot(19200, 5, b"second, longer")
        assert segment.saves == 2
        segment.close()
    finally:
        ring.unlink()  # and its snapshot segments


def test_a_copy_that_a_save_overlapped_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = RingWriter.create(1000)
    segment = SnapshotSegment.create(segment_name(ring.name, 1), 100)
    try:
        segment.publish(RawSnapshot(9600, 3, b"a" * 50), first=True)
        reader = SnapshotSegment.attach(segment_name(ring.name, 1))
        real_bytes = bytes

        def save_meanwhile(view: object) -> bytes:  # the worker publishes while the reader copies
            copied = real_bytes(view)  # type: ignore[call-overload]
            segment.publish(RawSnapshot(19200, 4, b"b" * 50))
            return copied

        monkeypatch.setattr(snapshot_segment, "bytes", save_meanwhile, raising=False)  # the copy's bytes()
        assert reader.read() is None
        monkeypatch.undo()
        assert reader.read() == RawSnapshot(19200, 4, b"b" * 50)
        reader.close()
    finally:
        segment.close()
        ring.unlink()


def test_an_installed_snapshot_and_ring_carry_on_at_the_snapshot_position() -> None:
    """What a node taking a session over builds: the snapshot as generation 1, a ring that starts where it ends."""
    name = f"parastream_{os.getpid()}_c0ffee"
    install(name, 1, RawSnapshot(48000, 7, b"pickle"))
    ring = RingWriter.create(1000, name, start=48000, snapshot_gen=1)
    try:
        tail = np.arange(300, dtype="<i2")
        ring.write(tail.tobytes())
        reader = RingReader.attach(name)
        assert (reader.read_pos, reader.write_pos, reader.snapshot_gen) == (48000, 48300, 1)
        assert np.array_equal(reader.read(48000, 300), tail)
        assert ring.copy(48100, 48300) == tail[100:].tobytes()
        assert read_latest(name, reader.snapshot_gen) == RawSnapshot(48000, 7, b"pickle")
        reader.close()
    finally:
        ring.unlink()
