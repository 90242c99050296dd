"""Runs `parastream serve` as a real subprocess for end-to-end tests (benchmarks.common's server wrapper), and the
process-level helpers they share (a clean exit, a live pid, a process's rings, polling). The HTTP-level ones, sync
and async, are in tests/helpers.py."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, ParastreamServer
from engine.ring import list_segments

__all__ = ["CLEAN_EXIT", "ROOT", "ServiceProcess", "alive", "segments_of", "wait_for"]

# uvicorn re-raises a captured SIGTERM/SIGINT once its graceful shutdown (our lifespan cleanup included) is done,
# so a clean signalled exit reports the signal, as the platform convention has it.
CLEAN_EXIT = (0, -signal.SIGTERM, -signal.SIGINT)


def alive(pid: int) -> bool:
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `predicate` every 50 ms until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def segments_of(pid: int) -> list[str]:
    return [name for name in list_segments() if name.startswith(f"parastream_{pid}_")]


class ServiceProcess(ParastreamServer):
    """The service under test: two workers unless told otherwise. `with` starts it and waits until it is ready;
    on leaving, a service that does not stop within 60 s of SIGTERM fails the test. The log stays until
    `remove_log()`, which tests call once they passed."""

    def __init__(self, model_dir: Path, **settings: Any) -> None:
        super().__init__(model_dir, name="parastream-test", **{"workers": 2, **settings})
