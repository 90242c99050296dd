"""The worker process: a thin I/O loop around `WorkerCore`.

A worker is forked by the model host (`engine.worker.host`) with the model already in memory, pins itself to its
core (or moves the model to its GPU), dials the API process back over a `multiprocessing.connection` socket, and
then loops. It exits when that socket closes: the API process is gone, so nobody is left to serve.
"""

from __future__ import annotations

import logging
import os
from multiprocessing.connection import Client, Connection

from engine.messages import (
    AbortSession,
    AudioReady,
    CloseSession,
    DetachSession,
    Hello,
    OpenSession,
    Ping,
    Pong,
    RestoreSession,
    Shutdown,
    ToWorker,
    WorkerReady,
)
from engine.worker.core import WorkerCore

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # with nothing to compute, block this long waiting for a message
# While only the second pass is busy, wait this long between looks at it: the loop must sleep, not spin, or it would
# take the core from that (lower-priority) thread.
SECOND_PASS_POLL_S = 0.005


def connect(address: str, authkey: bytes, slot: int, generation: int) -> Connection:
    conn = Client(address, family="AF_UNIX", authkey=authkey)
    conn.send(Hello(slot, generation, os.getpid()))
    return conn


def serve(conn: Connection, core: WorkerCore, ready: WorkerReady) -> None:
    """Run until the API process hangs up or says Shutdown."""
    conn.send(ready)
    while True:
        # 1. Block for a message when no session has a stride ready; when some have, just drain what is there.
        timeout = 0.0 if core.has_work() else SECOND_PASS_POLL_S if core.waiting() else IDLE_POLL_S
        try:
            while conn.poll(timeout):
                timeout = 0.0
                # 2. Apply every pending message before computing, so closes and aborts take effect at once.
                if not handle(conn, core, conn.recv()):
                    return
        except (EOFError, OSError):
            return  # the API process is gone
        # 3. One forward pass over the ready sessions (at most max_batch of them, round robin), then report.
        for msg in core.run_batch():
            try:
                conn.send(msg)
            except OSError:
                return


def handle(conn: Connection, core: WorkerCore, msg: ToWorker) -> bool:
    """Apply one message; False means stop."""
    match msg:
        case OpenSession() | RestoreSession():
            replies = core.open(msg)
        case AudioReady():
            replies = []  # the ring header says how much; the wake-up itself was the point
        case CloseSession():
            replies = core.close(msg)
        case AbortSession():
            replies = core.abort(msg)
        case DetachSession():
            replies = core.detach(msg)  # between strides, so the session's last snapshot is its whole state
        case Ping(seq=seq):
            replies = [Pong(seq, len(core.sessions), core.cache_bytes(), core.strides)]
        case Shutdown():
            core.drop_all()
            return False
        case _:
            # Unreachable for the typed union, but a pickled message is whatever the peer sent.
            log.warning("worker ignoring unknown message %r", msg)  # type: ignore[unreachable]
            replies = []
    for reply in replies:
        conn.send(reply)
    return True


def run_worker(
    core: WorkerCore, address: str, authkey: bytes, slot: int, generation: int, device: str, cpus: tuple[int, ...]
) -> None:
    conn = connect(address, authkey, slot, generation)
    try:
        serve(conn, core, WorkerReady(slot, generation, device, cpus))
    finally:
        core.drop_all()
        conn.close()
