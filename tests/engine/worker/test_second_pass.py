"""The second-pass thread: batches come back in order, and a sentence that breaks its batch fails alone."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.worker.second_pass import Done, Job, SecondPass
from tests.engine.worker.fakes import Decoded, HashDecoder


class Picky(HashDecoder):
    """Raises on any batch holding an audio whose first sample is negative."""

    def decode(self, audios: list[np.ndarray], hotwords: str) -> list[Decoded]:
        if any(len(a) and a[0] < 0 for a in audios):
            raise ValueError("poison")
        return super().decode(audios, hotwords)


def wait(second: SecondPass, timeout: float = 10.0) -> list[Done]:
    deadline = time.monotonic() + timeout
    done: list[Done] = []
    while second.busy and time.monotonic() < deadline:
        done += second.results()
        time.sleep(0.005)
    return done + second.results()


@pytest.mark.parametrize("threaded", [False, True])
def test_a_poisoned_sentence_fails_alone(threaded: bool) -> None:
    second = SecondPass(Picky(), threaded=threaded)
    good = np.full(1600, 0.1, dtype=np.float32)
    bad = np.full(1600, -0.1, dtype=np.float32)
    second.submit(Job(("a", "b", "c"), (good, bad, good * 2), ""))
    second.submit(Job(("d",), (good,), "x"))
    done = wait(second)
    second.stop()
    assert [d.keys for d in done] == [("a", "b", "c"), ("d",)]
    first = done[0].results
    assert isinstance(first[1], ValueError) and not isinstance(first[0], Exception)
    assert not isinstance(first[2], Exception) and list(first[2].tokens) != list(first[0].tokens)
    assert not second.busy
