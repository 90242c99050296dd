"""What the benchmarks share, and the tests with them (tests may import benchmarks; benchmarks never import tests).

- `ServerProcess`: a server (Parastream or a baseline) as its own process group, ready once `/readyz` says 200.
- `ParastreamServer`: `python -m app.cli serve` on a model, with `PARASTREAM_*` settings.
- `subscribed`: a task reading a session's events, once the server has answered the subscription.
- Where models live (`MODEL_CACHE`, `resolve_model`), the machine a result was measured on (`machine`,
  `git_commit`, `package_versions`), summary statistics (`percentile`, `summary_stats`), a `Timer`, a free port,
  and the `/proc` readers (`smaps_rollup`, `parent_of`, `cmdline`).

Nothing here imports torch or funasr: the load generator and the memory benchmark must not disturb what they measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TypeVar

import httpx
import numpy as np

if TYPE_CHECKING:
    from app.client import ParastreamClient

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# Random-weight models are built here on first use (tests: PARASTREAM_TEST_CACHE may point elsewhere).
MODEL_CACHE = Path.home() / ".cache" / "parastream"
MIB = 2**20

# ------------------------------------------------------------------------------------------------ models


def resolve_model(spec: str | Path, cache: Path = MODEL_CACHE) -> Path:
    """A model directory from a factory kind (`tiny-random`, `large-random`, `vad`, `offline-tiny-random`, ...: any
    of engine.model.factory.KINDS, built into `cache` on first use) or a path."""
    from engine.model.factory import KINDS, ensure_model

    if str(spec) in KINDS:
        return ensure_model(str(spec), cache)
    return Path(spec).expanduser()


# ------------------------------------------------------------------------------------------------ the machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere, else 'unknown')."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), not every core the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/meminfo").read_text().splitlines()
        return round(int(next(line.split()[1] for line in lines if line.startswith("MemTotal"))) / 2**20, 1)
    return None


def l3_cache() -> str | None:
    path = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    return path.read_text().strip() if path.exists() else None


def machine() -> dict[str, Any]:
    """CPU model, usable cores and memory: what every result file says it was measured on."""
    return {"cpu": cpu_model(), "cores": usable_cores(), "memory_gib": memory_gib()}


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def git_commit(mark_dirty: bool = True) -> str:
    """HEAD's short hash, with `-dirty` when tracked files have uncommitted changes (and `mark_dirty`); 'unknown'
    outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        if commit and mark_dirty and git("status", "--porcelain", "--untracked-files=no"):
            commit += "-dirty"
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or "unknown"


def package_versions(packages: Iterable[str], missing: str | None = "absent") -> dict[str, str | None]:
    """Each installed distribution's version; `missing` for one that is not installed."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = missing
    return out


# ------------------------------------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile, rounded to 0.1 (ms figures); None for no values."""
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def summary_stats(values: Sequence[float], tail: int = 95) -> dict[str, float]:
    """Median, the `tail` percentile (key `p<tail>`), mean, min, max and count."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(arr)),
        f"p{tail}": float(np.percentile(arr, tail)),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


class Timer:
    """Wall-clock and this process's CPU time of a `with` block: `wall_s`, `wall_ms`, `cpu_ms`."""

    wall_s = cpu_s = 0.0

    def __enter__(self) -> Self:
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._wall0
        self.cpu_s = time.process_time() - self._cpu0

    @property
    def wall_ms(self) -> float:
        return self.wall_s * 1000.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s * 1000.0


# ------------------------------------------------------------------------------------------------ /proc


def smaps_rollup(pid: int) -> dict[str, int]:
    """Every `Name: N kB` line of /proc/PID/smaps_rollup, in bytes (raises OSError once the process is gone)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def parent_of(pid: int) -> int:
    """The parent pid from /proc/PID/stat (raises OSError once the process is gone)."""
    # The comm field may hold spaces and parentheses: split after the last ')'.
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def cmdline(pid: int) -> str:
    """The command line, space-separated; '' once the process is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server process in its own process group (signals sent to it never reach us, and the whole group can be
    killed), logging to a temporary file, serving on `port`.

    `with` starts it (unless it was started already), waits for `/readyz` and closes it at the end. `close()`
    sends SIGTERM, waits, then SIGKILLs whatever is left of the group. The log stays until `remove_log()`, so
    that it can be read after the process ended."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        name: str = "server",
        cwd: Path = ROOT,
        ready_timeout: float = 180.0,
    ) -> None:
        self.argv = list(argv)
        self.env = {**os.environ, **(env or {})}  # read at start(): may still be changed before
        self.port = port if port is not None else free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self._log = tempfile.NamedTemporaryFile(prefix=f"{name.replace(' ', '-')}-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Self:
        self.proc = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if wait:
            self._ready_or_killed()
        return self

    def _ready_or_killed(self) -> None:
        try:
            self.wait_ready()
        except BaseException:
            self.kill()  # nothing closes a server that never became ready: leave nothing running
            raise

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until `/readyz` answers 200; fails with the log if the process exits or `timeout` s pass first."""
        assert self.proc is not None, f"{self.name} was never started"
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} not ready in {timeout:g} s:\n{self.log()}")
            time.sleep(0.2)

    def log(self, tail: int = 20_000) -> str:
        return Path(self._log.name).read_text(errors="replace")[-tail:]

    def remove_log(self) -> None:
        Path(self._log.name).unlink(missing_ok=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Send `sig` and wait for the exit status. If it has not exited within `timeout` s the group is killed and
        TimeoutExpired raised. None if it was never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL to whatever is left of the process group (nothing, after a clean stop), and reap the leader. Our
        handle on the log closes with it (the log is read by name; an unclosed handle warns when collected)."""
        self._log.close()
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self, strict: bool = True) -> None:
        """stop(), then kill() the rest of the group. A server that ignores SIGTERM raises TimeoutExpired (after
        being killed) when `strict`, else gets a warning on stderr."""
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            if strict:
                raise
            print(f"{self.name} (pid {self.pid}) ignored SIGTERM: killed", file=sys.stderr)
        finally:
            self.kill()

    def __enter__(self) -> Self:
        if self.proc is None:
            self.start(wait=False)
        self._ready_or_killed()  # no __exit__ follows a failed __enter__
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ParastreamServer(ServerProcess):
    """`python -m app.cli serve` on `model_dir`; each setting `k=v` becomes `PARASTREAM_<K>=v`."""

    def __init__(self, model_dir: Path, *, name: str = "parastream", ready_timeout: float = 180.0,
                 **settings: Any) -> None:
        port = free_port()
        env = {
            "PARASTREAM_MODEL": str(model_dir),
            "PARASTREAM_PORT": str(port),
            **{f"PARASTREAM_{k.upper()}": str(v) for k, v in settings.items()},
        }
        super().__init__([sys.executable, "-m", "app.cli", "serve"], env, port=port, name=name,
                         ready_timeout=ready_timeout)

    def workers(self) -> list[dict[str, Any]]:
        """`GET /v1/workers`: each slot's pid, generation, readiness, sessions and cache bytes."""
        return httpx.get(f"{self.base_url}/v1/workers", timeout=10).json()


async def subscribed(
    client: ParastreamClient,
    session_id: str,
    reader: Coroutine[Any, Any, T],
    progress: bool = False,
    timeout: float = 30.0,
) -> asyncio.Task[T]:
    """Run `reader` (a coroutine that reads `client.events(session_id, progress=progress)`) as a task, and return
    the task once the server has answered that subscription: its response headers arrived.

    From then on no live-only event (`progress`, which is never replayed) is missed: the server sends the headers
    before its event generator reads where the session stands, so audio appended after this returns cannot be
    processed before the subscriber is in place. (A fixed sleep instead is a race the slow machine loses.)"""
    answered = asyncio.Event()
    path = f"/v1/sessions/{session_id}/events"
    wanted = "true" if progress else None

    async def hook(response: httpx.Response) -> None:
        if response.request.url.path == path and response.request.url.params.get("progress") == wanted:
            answered.set()

    hooks = client.http.event_hooks["response"]  # the client's own list: hooks of other subscriptions come and go
    hooks.append(hook)
    try:
        task = asyncio.create_task(reader)
        waiter = asyncio.create_task(answered.wait())
        done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not answered.is_set():
            waiter.cancel()
            if task in done:
                task.result()  # raises what went wrong
            task.cancel()
            raise TimeoutError(f"no answer to the event subscription of session {session_id} in {timeout:g} s")
    finally:
        hooks.remove(hook)
    return task
