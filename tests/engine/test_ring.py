"""The shared-memory ring: layout, wrap-around, full-ring refusal, cross-process visibility, cleanup."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest

from engine.ring import (
    HEADER_BYTES,
    RingFull,
    RingReader,
    RingWriter,
    list_segments,
    new_segment_name,
    sweep_segments,
)


@pytest.fixture
def ring():
    writer = RingWriter.create(1000)
    yield writer
    writer.unlink()


def test_write_read_release_wraps_around(ring: RingWriter) -> None:
    reader = RingReader.attach(ring.name)
    try:
        data = np.arange(-3000, 3000, dtype="<i2")
        pos = 0
        for size in [1, 999, 700, 333, 1000, 17, 950]:
            chunk = data[pos % 6000 : pos % 6000 + size]
            if len(chunk) < size:
                chunk = np.resize(data, size)
            before = ring.write_pos
            assert ring.write(chunk.tobytes()) == before + size
            assert np.array_equal(reader.read(before, size), chunk)
            reader.release(before + size)
            pos += size
        assert ring.read_pos == ring.write_pos == pos
    finally:
        reader.close()


def test_full_ring_refuses_whole_append_and_keeps_data(ring: RingWriter) -> None:
    ring.write(np.ones(900, dtype="<i2").tobytes())
    with pytest.raises(RingFull) as exc:
        ring.write(np.full(101, 7, dtype="<i2").tobytes())
    assert exc.value.free == 100 and exc.value.needed == 101
    assert ring.write_pos == 900  # nothing was written
    reader = RingReader.attach(ring.name)
    assert np.array_equal(reader.read(0, 900), np.ones(900, dtype=np.int16))
    reader.release(500)
    ring.write(np.full(600, 7, dtype="<i2").tobytes())  # room again once the reader released
    assert np.array_equal(reader.read(900, 600), np.full(600, 7, dtype=np.int16))
    reader.close()


def test_reader_refuses_samples_not_held(ring: RingWriter) -> None:
    reader = RingReader.attach(ring.name)
    ring.write(np.zeros(10, dtype="<i2").tobytes())
    with pytest.raises(ValueError):
        reader.read(5, 10)
    reader.release(10)
    with pytest.raises(ValueError):
        reader.read(0, 1)  # released
    reader.close()


def test_header_layout(ring: RingWriter) -> None:
    ring.write(np.zeros(5, dtype="<i2").tobytes())
    raw = bytes(ring._shm.buf[:HEADER_BYTES])
    assert raw[:8] == b"PSRING01"
    assert int.from_bytes(raw[8:16], "little") == 1000
    assert int.from_bytes(raw[16:24], "little") == 5
    assert int.from_bytes(raw[24:32], "little") == 0


def _child_reads(name: str, q) -> None:  # runs in another process
    reader = RingReader.attach(name)
    q.put(reader.read(0, reader.write_pos).tolist())
    reader.release(reader.write_pos)
    reader.close()


def test_another_process_sees_the_audio_and_releases(ring: RingWriter) -> None:
    samples = np.array([1, -2, 3, -32768, 32767], dtype="<i2")
    ring.write(samples.tobytes())
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_child_reads, args=(ring.name, q))
    proc.start()
    assert q.get(timeout=60) == samples.tolist()
    proc.join(30)
    assert proc.exitcode == 0
    assert ring.read_pos == 5
    assert ring.name in list_segments()  # the child's exit did not unlink it (no resource_tracker)


def test_unlink_removes_segment() -> None:
    writer = RingWriter.create(10)
    assert writer.name in list_segments()
    writer.unlink()
    assert writer.name not in list_segments()


def test_sweep_removes_dead_owners_segments_only() -> None:
    dead_pid = _a_dead_pid()
    stale = RingWriter.create(10, name=new_segment_name(dead_pid))
    mine = RingWriter.create(10)
    try:
        removed = sweep_segments(stale_only=True)
        assert stale.name in removed and mine.name not in removed
        assert sweep_segments() == [mine.name]  # shutdown: this process's own
    finally:
        for w in (stale, mine):
            w.close()


def _a_dead_pid() -> int:
    proc = multiprocessing.get_context("spawn").Process(target=os.getpid)
    proc.start()
    proc.join()
    return proc.pid
