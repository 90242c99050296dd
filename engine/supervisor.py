"""The supervisor: starts the model host, keeps one worker alive in every slot, and carries messages.

It supervises processes and knows nothing of sessions: what it hears from workers goes to the `WorkerEvents` it
is started with (the engine), which decides what the news means (engine/placement.py for where sessions live).

It lives in the API process. Blocking socket I/O runs on small threads (an accept thread, and a reader and a writer
per worker); everything they learn is handed to the event loop with `call_soon_threadsafe`, so all state changes
happen on the loop thread and need no locks.

Liveness, after uvicorn's and gunicorn's supervisors:
- a worker's socket closing, or the host reporting its exit, means it is dead; a worker that answers no ping for
  `worker_ping_timeout_s`, or never becomes ready within `worker_boot_timeout_s`, is killed and counts as dead;
- a dead worker is replaced in the same slot, with a new generation number so that late messages from the old
  incarnation are recognised and dropped;
- a slot whose workers die `max_boot_failures` times in a row before becoming ready is halted, not respawned
  forever, and the service reports not-ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import queue
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener
from typing import Protocol

from engine.errors import EngineBootError
from engine.messages import (
    AudioReady,
    FromWorker,
    Hello,
    HostConfig,
    HostFailed,
    HostReady,
    Ping,
    Pong,
    Shutdown,
    SpawnWorker,
    ToWorker,
    WorkerExited,
    WorkerReady,
    WorkerSpawned,
)
from engine.settings import Settings
from engine.worker.host import host_main

log = logging.getLogger(__name__)

WAKEUP_BACKLOG = 256  # queued messages past which AudioReady hints to a worker are dropped


@dataclass
class WorkerSlot:
    index: int
    cpus: tuple[int, ...]
    device: str
    generation: int = 0
    pid: int | None = None
    conn: Connection | None = None
    outbox: queue.SimpleQueue[ToWorker | None] | None = None
    ready: bool = False
    spawned_at: float = 0.0
    last_pong: float = 0.0
    stats: Pong | None = None
    boot_failures: int = 0
    restarts: int = 0
    halted: bool = False


class WorkerEvents(Protocol):
    """What the supervisor reports, on the event loop's thread."""

    def on_worker_message(self, slot: int, msg: FromWorker) -> None: ...

    def on_worker_lost(self, slot: int, why: str) -> None:
        """The slot's worker died; its fate (respawned or halted) is already decided."""

    def on_worker_ready(self, slot: int) -> None: ...


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        # No side effects here (no files, no processes): `start` makes everything, so an unstarted supervisor is
        # free to build and to drop.
        self.settings = settings
        self._events: WorkerEvents | None = None
        self.slots: list[WorkerSlot] = []
        self.halt_reason: str | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tmpdir: str | None = None
        self._address = ""
        self._authkey = b""
        self._listener: Listener | None = None
        self._host: multiprocessing.process.BaseProcess | None = None
        self._host_conn: Connection | None = None
        self._host_lock = threading.Lock()  # host_conn.send from the loop; the reader thread only receives
        self._ping_task: asyncio.Task[None] | None = None
        self._ping_seq = 0

    # --- start / stop -------------------------------------------------------------------------------------

    async def start(self, events: WorkerEvents) -> None:
        self._events = events
        self._loop = asyncio.get_running_loop()
        self._tmpdir = tempfile.mkdtemp(prefix="parastream-")
        self._address = os.path.join(self._tmpdir, "workers.sock")
        self._authkey = secrets.token_bytes(32)
        self._listener = Listener(self._address, family="AF_UNIX", authkey=self._authkey, backlog=64)
        threading.Thread(target=self._accept_loop, name="parastream-accept", daemon=True).start()
        ready = await self._start_host()
        self.slots = self._make_slots(ready.gpu_count)
        for slot in self.slots:
            self._spawn(slot)
        self._ping_task = asyncio.create_task(self._ping_loop())

    def _make_slots(self, gpu_count: int) -> list[WorkerSlot]:
        s = self.settings
        if s.device == "cuda":
            if not gpu_count:
                raise EngineBootError("PARASTREAM_DEVICE=cuda but no CUDA device is visible; use PARASTREAM_DEVICE=cpu")
            if s.precision != "fp32":
                raise EngineBootError("PARASTREAM_PRECISION=int8 runs on CPU only; use fp32 with PARASTREAM_DEVICE=cuda")
            if s.resolved_backend() != "torch":
                raise EngineBootError("PARASTREAM_BACKEND=onnx runs on CPU only; use torch with PARASTREAM_DEVICE=cuda")
            return [WorkerSlot(i, (), f"cuda:{i % gpu_count}") for i in range(s.resolved_workers(gpu_count))]
        cpus = sorted(os.sched_getaffinity(0))
        # Each worker gets `worker_threads` cores of its own (wrapping round when there are more threads than cores):
        # pinning a 2-thread worker to one core would only make its threads take turns.
        t = s.worker_threads
        return [
            WorkerSlot(i, tuple(sorted({cpus[(i * t + j) % len(cpus)] for j in range(t)})), "cpu")
            for i in range(s.resolved_workers())
        ]

    async def _start_host(self) -> HostReady:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        s = self.settings
        config = HostConfig(
            s.model,
            s.device,
            s.worker_threads,
            self._address,
            self._authkey,
            s.max_batch,
            s.precision,
            s.resolved_backend(),
            s.vad_model,
            s.offline_model,
            s.punc_model,
            s.offline_max_batch,
            int(s.max_sentence_s * 1000),
            s.log_format,
        )
        self._host = ctx.Process(target=host_main, args=(child, config), name="parastream-model-host", daemon=True)
        self._host.start()
        child.close()
        self._host_conn = parent
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(None, self._first_host_message, parent)
        if isinstance(first, HostFailed):
            raise EngineBootError(first.message)
        threading.Thread(target=self._host_reader, name="parastream-host-reader", daemon=True).start()
        log.info("model host %d loaded %s in %.1f s", first.pid, self.settings.model, first.load_s)
        return first

    def _first_host_message(self, conn: Connection) -> HostReady | HostFailed:
        try:
            if conn.poll(self.settings.worker_boot_timeout_s):
                msg = conn.recv()
                if isinstance(msg, (HostReady, HostFailed)):
                    return msg
                return HostFailed(f"model host sent {msg!r} before loading")
            return HostFailed(f"model host did not load within PARASTREAM_WORKER_BOOT_TIMEOUT_S={self.settings.worker_boot_timeout_s}")
        except (EOFError, OSError):
            code = self._host.exitcode if self._host else None
            return HostFailed(f"model host died while loading the model (exit code {code}); see its log above")

    async def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._ping_task:
            self._ping_task.cancel()
        for slot in self.slots:
            self.send(slot.index, Shutdown())
        deadline = time.monotonic() + timeout
        while any(slot.conn is not None for slot in self.slots) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for slot in self.slots:
            self._kill(slot)
            self._disconnect(slot)
        with contextlib.suppress(OSError), self._host_lock:
            if self._host_conn:
                self._host_conn.send(Shutdown())
        if self._host is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._host.join, timeout)
            if self._host.is_alive():
                self._host.kill()
                self._host.join(1)
        if self._host_conn:
            self._host_conn.close()
        if self._listener:
            with contextlib.suppress(OSError):
                self._listener.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    # --- state the engine reads ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self.slots) and all(slot.ready for slot in self.slots)

    @property
    def size(self) -> int:
        return len(self.slots)

    def ready_indices(self) -> list[int]:
        return [slot.index for slot in self.slots if slot.ready]

    def is_ready(self, slot: int) -> bool:
        return 0 <= slot < len(self.slots) and self.slots[slot].ready

    @property
    def any_hope(self) -> bool:
        """Some slot is ready or still being (re)started, so a session waiting for a worker will get one."""
        return not self._stopping and any(not slot.halted for slot in self.slots)

    def send(self, slot_index: int | None, msg: ToWorker) -> bool:
        if slot_index is None:  # the session is between workers; its restore message will carry the news
            return False
        slot = self.slots[slot_index]
        if slot.outbox is None:
            return False
        if isinstance(msg, AudioReady) and slot.outbox.qsize() > WAKEUP_BACKLOG:
            # A wake-up is only a hint (a worker also polls its rings every second): with a backlog this deep the
            # worker is busy, and more hints would only grow the queue without bound.
            return True
        slot.outbox.put(msg)
        return True

    # --- spawning and losing workers (loop thread) --------------------------------------------------------

    def _spawn(self, slot: WorkerSlot) -> None:
        slot.generation += 1
        slot.ready = False
        slot.pid = None
        slot.spawned_at = time.monotonic()
        with self._host_lock:
            assert self._host_conn is not None
            self._host_conn.send(SpawnWorker(slot.index, slot.generation, slot.cpus, slot.device))

    def _lost(self, slot: WorkerSlot, generation: int, why: str) -> None:
        if generation != slot.generation or slot.halted:
            return  # already handled for this incarnation
        was_ready = slot.ready
        self._kill(slot)
        self._disconnect(slot)
        slot.ready = False
        if self._stopping:
            return
        log.error("worker %d (pid %s) lost: %s", slot.index, slot.pid, why)
        slot.boot_failures = 0 if was_ready else slot.boot_failures + 1
        if slot.boot_failures >= self.settings.max_boot_failures:
            slot.halted = True
            self.halt_reason = (
                f"worker slot {slot.index} failed to boot {slot.boot_failures} times in a row (last: {why}); "
                "not respawning it (PARASTREAM_MAX_BOOT_FAILURES)"
            )
            log.error(self.halt_reason)
        else:
            slot.restarts += 1
            self._spawn(slot)
        assert self._events is not None
        self._events.on_worker_lost(slot.index, why)  # after the slot's fate is known: its sessions go to whoever can take them

    def _kill(self, slot: WorkerSlot, sig: int = signal.SIGKILL) -> None:
        if slot.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, sig)

    def _disconnect(self, slot: WorkerSlot) -> None:
        if slot.outbox is not None:
            slot.outbox.put(None)  # stops the writer thread, which closes the connection
        slot.outbox = None
        slot.conn = None

    # --- loop-thread handlers -----------------------------------------------------------------------------

    def _attach(self, hello: Hello, conn: Connection) -> None:
        slot = self.slots[hello.slot] if 0 <= hello.slot < len(self.slots) else None
        if slot is None or hello.generation != slot.generation or self._stopping:
            conn.close()
            return
        slot.pid = hello.pid
        slot.conn = conn
        slot.outbox = queue.SimpleQueue()
        slot.last_pong = time.monotonic()
        gen = slot.generation
        threading.Thread(target=self._reader, args=(slot.index, gen, conn), daemon=True).start()
        threading.Thread(target=self._writer, args=(slot.outbox, conn), daemon=True).start()

    def _dispatch(self, slot_index: int, generation: int, msg: FromWorker) -> None:
        slot = self.slots[slot_index]
        if generation != slot.generation:
            return
        match msg:
            case WorkerReady():
                slot.ready = True
                slot.boot_failures = 0
                log.info("worker %d ready (pid %s, %s, cpus %s)", slot.index, slot.pid, msg.device, list(msg.cpus))
                assert self._events is not None
                self._events.on_worker_ready(slot.index)
            case Pong():
                slot.last_pong = time.monotonic()
                slot.stats = msg
            case _:
                assert self._events is not None
                self._events.on_worker_message(slot_index, msg)

    def _host_event(self, msg: object) -> None:
        match msg:
            case WorkerSpawned(slot=i, generation=gen, pid=pid):
                if self.slots[i].generation == gen and self.slots[i].pid is None:
                    self.slots[i].pid = pid
            case WorkerExited(slot=i, generation=gen, returncode=code):
                if 0 <= i < len(self.slots):
                    self._lost(self.slots[i], gen, f"exited with code {code}")
            case "host-lost":
                if not self._stopping:
                    self.halt_reason = "the model host process died; restart the service"
                    log.error(self.halt_reason)

    async def _ping_loop(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.worker_ping_interval_s)
            now = time.monotonic()
            self._ping_seq += 1
            for slot in self.slots:
                if slot.halted:
                    continue
                if slot.ready and now - slot.last_pong > s.worker_ping_timeout_s:
                    self._lost(slot, slot.generation, f"no pong for {now - slot.last_pong:.0f} s")
                elif not slot.ready and now - slot.spawned_at > s.worker_boot_timeout_s:
                    self._lost(slot, slot.generation, "did not become ready in time")
                elif slot.outbox is not None:
                    slot.outbox.put(Ping(self._ping_seq))

    # --- threads ------------------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(fn, *args)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                conn = self._listener.accept()
            except OSError:
                return  # listener closed
            except Exception:  # a bad handshake must not stop accepting
                log.warning("rejected a worker connection", exc_info=True)
                continue
            try:
                hello = conn.recv() if conn.poll(10) else None
            except (EOFError, OSError):
                hello = None
            if isinstance(hello, Hello):
                self._call(self._attach, hello, conn)
            else:
                conn.close()

    def _reader(self, slot_index: int, generation: int, conn: Connection) -> None:
        try:
            while True:
                self._call(self._dispatch, slot_index, generation, conn.recv())
        except (EOFError, OSError):
            pass
        self._call(self._lost, self.slots[slot_index], generation, "connection closed")

    @staticmethod
    def _writer(outbox: queue.SimpleQueue[ToWorker | None], conn: Connection) -> None:
        # A dedicated writer so that a worker busy with a long stride never blocks the event loop on a full socket.
        while (msg := outbox.get()) is not None:
            try:
                conn.send(msg)
            except OSError:
                break
        with contextlib.suppress(OSError):
            conn.close()

    def _host_reader(self) -> None:
        assert self._host_conn is not None
        try:
            while True:
                self._call(self._host_event, self._host_conn.recv())
        except (EOFError, OSError):
            self._call(self._host_event, "host-lost")
