"""Fixtures shared by the engine tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from engine.ring import RingWriter


@pytest.fixture
def rings() -> Iterator[Callable[[], RingWriter]]:
    """A factory of 30 s audio rings, each unlinked after the test (the suite-wide check fails on a leaked one)."""
    made: list[RingWriter] = []

    def make() -> RingWriter:
        made.append(RingWriter.create(16000 * 30))
        return made[-1]

    yield make
    for ring in made:
        ring.unlink()
