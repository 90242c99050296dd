"""The model host: loads the model once, then forks every worker from that loaded state.

Why a separate host process rather than forking from the API process or spawning fresh workers:
- N workers must not cost N copies of the weights. Forked children share the host's pages copy-on-write, and the
  measured private memory of a forked worker is tens of MB where a spawned one is hundreds (`import funasr` alone
  is ~500 MB per process). See docs/memory.md.
- The API process runs an event loop and threads, and must never import torch or funasr. Forking it is unsafe.
- A replacement worker is a fork away (milliseconds), with no reload, so a dead worker's slot is refilled fast.

Fork safety: the host loads with one torch thread and runs no inference, so no OpenMP pool exists when it forks.
It loads on the CPU even for CUDA serving; each worker moves the model to its own GPU after the fork, because CUDA
cannot be initialised before a fork. The host dies with the API process (PR_SET_PDEATHSIG); workers notice their
socket to the API process closing and exit on their own.

This module is imported by the API process (to start the host) so it must not import torch at module level.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import time
import traceback
from multiprocessing.connection import Connection

from engine import logs
from engine.messages import (
    HostConfig,
    HostFailed,
    HostReady,
    Shutdown,
    SpawnWorker,
    WorkerExited,
    WorkerSpawned,
)

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
WORKER_BOOT_FAILED = 3  # exit code of a worker that died before it could serve


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    except OSError:  # pragma: no cover - not glibc
        pass


def _malloc_trim() -> None:
    """Loading deep-copies the state dict; give the freed heap back so children do not inherit it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover
        pass


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LOAD_MMAP_THRESHOLD = 128 * 1024  # glibc's initial value
SERVE_MMAP_THRESHOLD = 32 * 1024 * 1024  # the most glibc's own dynamic threshold would reach


def _set_mmap_threshold(nbytes: int) -> None:
    """glibc serves allocations above its mmap threshold from their own mappings, returned to the OS on free; below
    it, from the heap, where freed memory stays for reuse. By default it raises the threshold each time a large
    block is freed. Setting it fixes it (no more raising).

    While loading, the threshold stays low: building the ONNX Runtime session frees hundreds of MiB of temporaries,
    which otherwise stayed in the host's heap (measured: ~400 MiB more in the host), and which forked workers would
    then allocate from, copying pages shared with the host. For serving it is raised to glibc's own ceiling, because
    a low fixed threshold makes every large tensor of every op an mmap, munmap and page faults: measured on the
    large-random encoder at B = 4, eager fp32 434 ms instead of 330, eager int8 312 instead of 131."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, nbytes)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def host_main(conn: Connection, config: HostConfig) -> None:
    """Entry point of the host process (started with the multiprocessing 'spawn' context)."""
    _die_with_parent()
    _set_mmap_threshold(LOAD_MMAP_THRESHOLD)
    # Ctrl-C and a group-wide SIGTERM (timeout(1), systemd's control-group kill) reach every process; only the API
    # process acts on them, and shuts the host and workers down in order (workers finish their strides first).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The workers are forked from here and keep this configuration (json: what funasr prints becomes records too).
    logs.configure(config.log_format, "%(asctime)s model-host %(levelname)s %(message)s")
    # Count GPUs through NVML so that CUDA itself is not initialised before we fork.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    started = time.perf_counter()
    try:
        models = _load(config)
    except Exception as exc:  # report, never crash-loop: the supervisor halts on HostFailed
        conn.send(HostFailed(_describe(exc)))
        return
    conn.send(HostReady(os.getpid(), time.perf_counter() - started, _gpu_count()))
    _serve(conn, config, models)


def _load(config: HostConfig) -> tuple[object, object]:
    import torch

    from engine.model.adapter import StreamingModel

    torch.set_num_threads(1)  # no OpenMP pool may be running when we fork
    # The onnx backend's session is opened here, before the fork, so that workers share its weights; with one
    # intra-op thread it starts no thread pool that a fork could break.
    model = StreamingModel.load(
        config.model, device="cpu", ncpu=1, precision=config.precision, backend=config.backend, threads=1
    )
    sentence_models = _load_sentence_models(config)
    _malloc_trim()
    _set_mmap_threshold(SERVE_MMAP_THRESHOLD)  # inherited by every worker: see _set_mmap_threshold
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) inherited objects in every child
    return model, sentence_models


def _load_sentence_models(config: HostConfig) -> object:
    """The 2pass models, when configured: loaded here once, like the streaming model, and shared by every worker."""
    if not config.vad_model:
        return None
    from engine.model.offline import OfflineModel
    from engine.model.punctuation import PuncModel
    from engine.model.vad import VadModel
    from engine.worker.core import SentenceModels

    return SentenceModels(
        VadModel.load(config.vad_model, max_sentence_ms=config.max_sentence_ms),
        OfflineModel.load(config.offline_model),
        PuncModel.load(config.punc_model) if config.punc_model else None,
        config.offline_max_batch,
    )


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _describe(exc: BaseException) -> str:
    from engine.model.loading import ModelLoadError

    if isinstance(exc, ModelLoadError):
        return str(exc)
    tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return f"loading the model failed (PARASTREAM_MODEL): {tail}"


def _serve(conn: Connection, config: HostConfig, models: tuple[object, object]) -> None:
    children: dict[int, tuple[int, int]] = {}  # pid -> (slot, generation)
    try:
        while True:
            # 1. Fork what the supervisor asks for.
            try:
                if conn.poll(0.2):
                    msg = conn.recv()
                    if isinstance(msg, Shutdown):
                        return
                    if isinstance(msg, SpawnWorker):
                        pid = _fork_worker(conn, config, models, msg)
                        children[pid] = (msg.slot, msg.generation)
                        conn.send(WorkerSpawned(msg.slot, msg.generation, pid))
            except (EOFError, OSError):
                return  # the API process is gone
            # 2. Reap children and say how they ended.
            _reap(conn, children)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)  # they ignore SIGTERM; by now the supervisor has let them go
            except ProcessLookupError:
                pass


def _reap(conn: Connection, children: dict[int, tuple[int, int]]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        slot, generation = children.pop(pid, (-1, -1))
        conn.send(WorkerExited(slot, generation, pid, os.waitstatus_to_exitcode(status)))


def _fork_worker(conn: Connection, config: HostConfig, models: tuple[object, object], msg: SpawnWorker) -> int:
    pid = os.fork()
    if pid:
        return pid
    # --- in the child: never return into the host's loop ---
    code = 0
    try:
        conn.close()  # the host's control pipe; SIGINT/SIGTERM stay ignored (see host_main)
        _worker_child(config, models, msg)
    except BaseException:  # noqa: BLE001 - the child must always end in os._exit
        traceback.print_exc()
        code = WORKER_BOOT_FAILED
    finally:
        os._exit(code)


def _worker_child(config: HostConfig, models: tuple[object, object], msg: SpawnWorker) -> None:
    import torch

    from engine.worker.core import WorkerCore
    from engine.worker.process import run_worker

    # Fault injection for the boot-failure tests: while this file exists, workers die as they boot. Not a setting;
    # an operator never sets it.
    fail_file = os.environ.get("PARASTREAM_TEST_FAIL_BOOT_FILE")
    if fail_file and os.path.exists(fail_file):
        raise RuntimeError(f"injected boot failure ({fail_file} exists)")
    service_cpus = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    if msg.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(msg.cpus))
    torch.set_num_threads(config.worker_threads)
    model, sentence_models = models
    if msg.device.startswith("cuda"):
        model.to(msg.device)  # type: ignore[attr-defined]
        if sentence_models is not None:
            sentence_models.to(msg.device)  # type: ignore[attr-defined]
    # The second pass may use every core of the service (engine/worker/second_pass.py says why).
    core = WorkerCore(model, config.max_batch, sentence_models, second_pass_cpus=service_cpus)  # type: ignore[arg-type]
    run_worker(core, config.address, config.authkey, msg.slot, msg.generation, msg.device, msg.cpus)
