"""Memory of a running Parastream service: what does each worker cost once the model host has forked it?

    python -m benchmarks.memory --model large-random --workers 2 --sessions 4
    python -m benchmarks.memory --model large-random --two-pass --sessions 4 --seconds 20   # all four models

Starts the real service (`python -m app.cli serve`) as a subprocess, finds its processes (API process, model host,
workers, multiprocessing's resource_tracker) and reads `/proc/PID/smaps_rollup` for each at three moments:
idle after ready, mid-stream with S concurrent sessions, and after every session got its final. It also reads the
per-session cache bytes the workers report in their pongs (`GET /v1/workers`), and runs a *standalone probe*: a
separate process that loads the model on its own, as a worker without fork sharing would, to measure what one full
copy costs. Results go to benchmarks/results/memory-<model>.json and .md.

Figures are MiB (2**20 bytes), read from the kernel's smaps_rollup (kB granularity):
- RSS: resident pages; PSS: each page divided by the number of processes mapping it (sums to real use);
- private = Private_Clean + Private_Dirty: pages only this process maps, i.e. what it alone costs;
- shared = Shared_Clean + Shared_Dirty: pages also mapped elsewhere (for a worker: mostly the host's weights).

`--two-pass`: the service also loads the 2pass models (`PARASTREAM_VAD_MODEL` `vad`, `PARASTREAM_OFFLINE_MODEL`
`offline-<size>-random`, `PARASTREAM_PUNC_MODEL` `punc-<size>-random`, the size of `--model`), all in the host and
shared by the workers; the sessions are `2pass` sessions streaming `synth_sentences` audio, so sentences are decoded
while memory is sampled (the *peak* column holds the offline model's activations). No standalone probe is run in
this mode (it would load the streaming model only). Results: memory-2pass-<model>.json / .md.

The benchmark process itself never imports torch or funasr (the probe is a subprocess), so it cannot disturb what it
measures beyond its HTTP traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app.client import ParastreamClient, stream_pcm
from benchmarks.audio import synth_sentences, synth_speechlike, to_float32
from benchmarks.common import (
    MIB,
    RESULTS,
    ROOT,
    ParastreamServer,
    cmdline,
    git_commit,
    machine,
    now_utc,
    package_versions,
    parent_of,
    resolve_model,
    smaps_rollup,
)
from engine.model.factory import KINDS
from engine.ring import list_segments, sweep_segments
from engine.units import SAMPLE_RATE, STRIDE_SAMPLES

MIN_STRIDES = 6  # the encoder cache grows over the first 4 strides (encoder_chunk_look_back=4); sample after that
PING_INTERVAL_S = 0.2
GOAL_MIB = 100  # private memory allowed per worker beyond the first (large-random)
PHASES = ("idle", "loaded", "after")

# --------------------------------------------------------------------------------------------- /proc readers


def memory_of(pid: int) -> dict[str, float]:
    """RSS / PSS / private / shared (and the anonymous part of RSS) in MiB."""
    s = smaps_rollup(pid)
    return {
        "rss": s["Rss"] / MIB,
        "pss": s["Pss"] / MIB,
        "private": (s["Private_Clean"] + s["Private_Dirty"]) / MIB,
        "shared": (s["Shared_Clean"] + s["Shared_Dirty"]) / MIB,
        "anonymous": s.get("Anonymous", 0) / MIB,
        # The anonymous part of PSS (weights, heaps): unlike the file-backed part it is shared only within the
        # fork family, so its sum over our processes does not move when unrelated processes map the same libraries.
        "pss_anon": s.get("Pss_Anon", 0) / MIB,
    }


_MAPPING_RE = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")


def top_private_mappings(pid: int, k: int = 8) -> list[dict[str, Any]]:
    """Where a process's private memory lives: /proc/PID/smaps summed per mapping name ([heap], [anon], a .so...).

    This answers "is it copy-on-write of the weights, the malloc heap, or the torch allocator's anonymous mmaps?"
    without attaching a debugger: each Private_* field counts pages only this process maps.
    """
    totals: dict[str, dict[str, float]] = {}
    name = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        m = _MAPPING_RE.match(line)
        if m:
            name = m.group(1).strip() or "[anon]"
            row = totals.setdefault(name, {"private_dirty": 0.0, "private_clean": 0.0, "rss": 0.0, "mappings": 0})
            row["mappings"] += 1
            continue
        key, _, rest = line.partition(":")
        if key in ("Private_Dirty", "Private_Clean", "Rss"):
            totals[name][key.lower()] += int(rest.split()[0]) / 1024  # kB -> MiB
    rows = [{"name": n, **v} for n, v in totals.items()]
    rows.sort(key=lambda r: r["private_dirty"] + r["private_clean"], reverse=True)
    return [{k2: (round(v, 1) if isinstance(v, float) else v) for k2, v in r.items()} for r in rows[:k]]


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if parent_of(int(entry)) == pid:
                    kids.append(int(entry))
    return sorted(kids)


def find_processes(api_pid: int, worker_pids: list[int]) -> dict[str, int]:
    """Role -> pid. The host is found as the workers' parent (they are its forks) and checked to be the API's child;
    it runs as multiprocessing's spawn child, so its command line says `spawn_main`, not its Process name."""
    roles = {"api": api_pid}
    kids = children_of(api_pid)
    hosts = {parent_of(pid) for pid in worker_pids}
    if len(hosts) != 1 or not hosts <= set(kids):
        raise RuntimeError(f"workers {worker_pids} are not all children of one child of the API process {api_pid}")
    roles["model_host"] = hosts.pop()
    for i, pid in enumerate(worker_pids):
        roles[f"worker{i}"] = pid
    for pid in kids:
        if "resource_tracker" in cmdline(pid):
            roles["resource_tracker"] = pid
    return roles


def other_torch_processes(ours: set[int]) -> list[int]:
    """Processes outside the measured tree that map libtorch. File-backed pages (libtorch's ~150 MiB of .so text)
    count as shared with them, so while any run, our processes' private memory and PSS read lower than alone."""
    others = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in ours and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if "libtorch_cpu" in Path(f"/proc/{entry}/maps").read_text():
                    others.append(int(entry))
    return sorted(others)


# --------------------------------------------------------------------------------------------- the service


class Service(ParastreamServer):
    """The service measured: its workers report fresh cache bytes (frequent pings); on leaving, it is stopped
    (killed if it ignores SIGTERM, with a warning), the rings of a killed API process are swept and its log goes."""

    def __init__(self, model_dir: Path, workers: int, **settings: Any) -> None:
        super().__init__(model_dir, name="parastream-memory", ready_timeout=600, workers=workers,
                         worker_ping_interval_s=PING_INTERVAL_S, **settings)

    def close(self, strict: bool = False) -> None:
        try:
            super().close(strict)
        finally:
            if self.proc is not None:
                sweep_segments(owner_pid=self.pid)  # a clean stop leaves none
            self.remove_log()


# --------------------------------------------------------------------------------------------- load


class Sampler:
    """Reads memory of every process every `period` s while sessions stream, keeping each field's peak."""

    def __init__(self, roles: dict[str, int], period: float = 0.5) -> None:
        self.roles = roles
        self.period = period
        self.peak: dict[str, dict[str, float]] = {}

    async def run(self) -> None:
        while True:
            for role, pid in self.roles.items():
                with contextlib.suppress(OSError):
                    now = memory_of(pid)
                    best = self.peak.setdefault(role, now)
                    for key, value in now.items():
                        best[key] = max(best[key], value)
            await asyncio.sleep(self.period)


def snapshot(roles: dict[str, int]) -> dict[str, dict[str, float]]:
    return {role: memory_of(pid) for role, pid in roles.items()}


def sentence_audio(seconds: float, seed: int) -> Any:
    """About `seconds` of synth_sentences audio: sentences of 2-5 s, 1.2 s pauses (each ends a VAD segment)."""
    lengths, total = [], 0.5
    while total < seconds - 3.2:
        lengths.append(2.0 + (seed * 7 + len(lengths) * 3) % 4 * 1.0)
        total += lengths[-1] + 1.2
    return synth_sentences(lengths or [2.0], seed=seed)


async def stream_sessions(service: Service, roles: dict[str, int], sessions: int, seconds: float, speed: float,
                          two_pass: bool = False) -> dict[str, Any]:
    """Stream `sessions` sessions at once; snapshot memory and worker cache bytes once each has run MIN_STRIDES."""
    sampler = Sampler(roles)
    sampling = asyncio.create_task(sampler.run())
    async with ParastreamClient(service.base_url, timeout=60) as client:
        # Created one after another, so the least-loaded placement spreads them round-robin over the workers.
        options = {"mode": "2pass"} if two_pass else {}
        ids = [(await client.create_session(**options))["id"] for _ in range(sessions)]

        async def final_of(session_id: str) -> str:
            last = "none"
            async for event in client.events(session_id):
                last = event.type
            return last

        finals = [asyncio.create_task(final_of(sid)) for sid in ids]
        senders = [
            asyncio.create_task(stream_pcm(
                client, sid, sentence_audio(seconds, i) if two_pass else synth_speechlike(seconds, seed=i), SAMPLE_RATE,
                speed=speed,
            ))
            for i, sid in enumerate(ids)
        ]
        # Mid-stream moment: every session past the encoder cache's growth, none finished yet.
        deadline = time.monotonic() + seconds / speed + 300
        while True:
            infos = [(await client.http.get(f"/v1/sessions/{sid}")).json() for sid in ids]
            if all(i["samples_processed"] >= MIN_STRIDES * STRIDE_SAMPLES for i in infos):
                break
            if time.monotonic() > deadline or any(i["state"] not in ("open", "closing") for i in infos):
                raise RuntimeError(f"sessions never reached {MIN_STRIDES} strides while open: {infos}")
            await asyncio.sleep(0.1)
        await asyncio.sleep(3 * PING_INTERVAL_S)  # the workers' last pong must postdate those strides
        loaded = snapshot(roles)
        others = other_torch_processes(set(roles.values()))
        workers = (await client.http.get("/v1/workers")).json()
        infos = [(await client.http.get(f"/v1/sessions/{sid}")).json() for sid in ids]
        mappings = {role: top_private_mappings(pid) for role, pid in roles.items() if role.startswith("worker")}
        await asyncio.gather(*senders)
        outcomes = await asyncio.gather(*finals)
    sampling.cancel()
    return {
        "loaded": loaded,
        "other_torch_processes_loaded": others,
        "peak": sampler.peak,
        "workers": workers,
        "sessions_at_sample": [
            {k: i[k] for k in ("state", "worker", "samples_received", "samples_processed")} for i in infos
        ],
        "outcomes": outcomes,
        "mappings_loaded": mappings,
    }


# --------------------------------------------------------------------------------------------- standalone probe


def probe(model_dir: str, sessions: int, strides: int) -> None:
    """(Runs in a subprocess.) Cost of one worker *without* fork sharing: import, load and step on its own.

    Mirrors what the host does before forking (1 torch thread, malloc_trim), then runs `sessions` sessions for
    `strides` strides on the one thread, and prints JSON: memory after each phase and the cache bytes of a
    session after each stride (StreamingModel.cache_nbytes, the figure a worker reports in its pongs)."""
    import ctypes

    result: dict[str, Any] = {"start": memory_of(os.getpid())}
    import torch

    from engine.messages import StreamOptions
    from engine.model.adapter import StreamingModel

    torch.set_num_threads(1)
    result["imported"] = memory_of(os.getpid())
    model = StreamingModel.load(model_dir, device="cpu", ncpu=1)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    result["loaded_model"] = memory_of(os.getpid())
    opts = StreamOptions()
    caches = [model.new_cache(opts) for _ in range(sessions)]
    audio = to_float32(synth_speechlike(strides * 0.6, seed=0))
    growth = []
    for k in range(strides):
        piece = audio[k * STRIDE_SAMPLES : (k + 1) * STRIDE_SAMPLES]
        for cache in caches:
            model.step(cache, piece, False, opts)
        growth.append(StreamingModel.cache_nbytes(caches[0]))
    result["after_strides"] = memory_of(os.getpid())
    result["cache_bytes_by_stride"] = growth
    result["params"] = sum(p.numel() for p in model.model.parameters())
    result["param_bytes"] = sum(p.numel() * p.element_size() for p in model.model.parameters())
    print(json.dumps(result))


def run_probe(model_dir: Path, sessions: int, strides: int = 8) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--probe", str(model_dir), "--sessions", str(sessions),
         "--probe-strides", str(strides)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=900,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- report


def conditions(model: str, model_dir: Path, workers: int, sessions: int, seconds: float, speed: float) -> dict[str, Any]:
    return {
        "date": now_utc(),
        "git_commit": git_commit(mark_dirty=False),
        **machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **package_versions(("torch", "funasr")),
        "model": model,
        "model_dir": str(model_dir),
        "workers": workers,
        "sessions": sessions,
        "audio_seconds_per_session": seconds,
        "speed_vs_realtime": speed,
        "chunk_size": [0, 10, 5],
        "ping_interval_s": PING_INTERVAL_S,
    }


def headline(phases: dict[str, dict[str, dict[str, float]]], load: dict[str, Any], standalone: dict[str, Any] | None,
             workers: int) -> dict[str, Any]:
    worker_roles = [f"worker{i}" for i in range(workers)]
    measured = {**phases, "peak": load["peak"]}
    private = {ph: {r: round(measured[ph][r]["private"], 1) for r in worker_roles} for ph in (*PHASES, "peak")}
    # Workers are symmetric, so "beyond the first" is the worst of workers 1..N-1, in each phase.
    beyond_first = {ph: max(v[r] for r in worker_roles[1:]) for ph, v in private.items()} if workers > 1 else None
    placed = [w for w in load["workers"] if w["worker_sessions"]]
    n_sessions = sum(w["worker_sessions"] for w in placed)
    pss_total = {ph: round(sum(m["pss"] for m in phases[ph].values()), 1) for ph in PHASES}
    pss_anon_total = {ph: round(sum(m["pss_anon"] for m in phases[ph].values()), 1) for ph in PHASES}
    # A worker without sharing holds its own anonymous memory (weights, heap); its file-backed pages (libtorch and
    # other .so text) would still be shared through the page cache with other such workers, so count those once.
    out = {
        "worker_private_mib": private,
        "private_beyond_first_worker_mib": beyond_first,
        "goal_mib": GOAL_MIB,
        "goal_met": None if beyond_first is None else bool(max(beyond_first.values()) <= GOAL_MIB),
        "pss_total_mib": pss_total,
        "pss_anon_total_mib": pss_anon_total,
        "cache_bytes_per_session": sum(w["cache_bytes"] for w in placed) // n_sessions if n_sessions else None,
        "model_host_rss_mib": round(phases["loaded"]["model_host"]["rss"], 1),
    }
    if standalone is None:  # --two-pass: no probe
        return out
    alone = standalone["after_strides"]
    file_backed = alone["rss"] - alone["anonymous"]
    return {
        **out,
        "cache_bytes_per_session_inprocess": standalone["cache_bytes_by_stride"][-1],
        "standalone_worker_rss_mib": round(alone["rss"], 1),
        "standalone_worker_anonymous_mib": round(alone["anonymous"], 1),
        "without_sharing_estimate_mib": round(workers * alone["anonymous"] + file_backed + phases["loaded"]["api"]["pss"], 1),
    }


def markdown(result: dict[str, Any]) -> str:
    c, h, phases = result["conditions"], result["headline"], result["phases"]
    lines = [
        f"# Memory: {c['model']}{' with the 2pass models' if c.get('two_pass_models') else ''}, {c['workers']} "
        f"workers, {c['sessions']} sessions",
        "",
        f"{c['date']} · commit {c['git_commit']} · {c['cpu']} ({c['cores']} cores, {c['memory_gib']} GiB) · "
        f"Python {c['python']}, torch {c['torch']}, funasr {c['funasr']} · {c['audio_seconds_per_session']} s of "
        f"audio per session at {c['speed_vs_realtime']}x real time, chunk_size {c['chunk_size']}.",
        "",
        "MiB from `/proc/PID/smaps_rollup`; private = Private_Clean + Private_Dirty, shared = Shared_Clean + "
        "Shared_Dirty. *loaded*: every session past its first "
        f"{MIN_STRIDES} strides; *peak*: the largest value sampled every 0.5 s while streaming; *after*: every "
        "session finished.",
        "",
        "Other processes mapping libtorch (idle / loaded / after): "
        + " / ".join(str(len(result["other_torch_processes"][ph])) for ph in PHASES)
        + ". Library pages count as shared with them, so private and PSS figures are exact only where this is 0.",
        "",
        "| process | pid | RSS idle / loaded / after | PSS idle / loaded / after | private idle / loaded / peak / after | shared loaded |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for role, pid in result["processes"].items():
        p = {ph: phases[ph][role] for ph in PHASES}
        peak = result["load"]["peak"].get(role, p["loaded"])
        lines.append(
            f"| {role} | {pid} | {p['idle']['rss']:.0f} / {p['loaded']['rss']:.0f} / {p['after']['rss']:.0f} "
            f"| {p['idle']['pss']:.0f} / {p['loaded']['pss']:.0f} / {p['after']['pss']:.0f} "
            f"| {p['idle']['private']:.1f} / {p['loaded']['private']:.1f} / {peak['private']:.1f} / {p['after']['private']:.1f} "
            f"| {p['loaded']['shared']:.0f} |"
        )
    t = h["pss_total_mib"]
    a = h["pss_anon_total_mib"]
    lines.append(f"| **total PSS** | | | **{t['idle']:.0f} / {t['loaded']:.0f} / {t['after']:.0f}** | | |")
    lines.append(f"| total PSS, anonymous part | | | {a['idle']:.0f} / {a['loaded']:.0f} / {a['after']:.0f} | | |")
    cps = h["cache_bytes_per_session"] or 0
    b = h["private_beyond_first_worker_mib"]
    verdict = "n/a (one worker)" if h["goal_met"] is None else "met" if h["goal_met"] else "NOT met"
    lines += [
        "",
        "- Private memory of a worker beyond the first, idle / loaded / peak / after: "
        + (f"**{b['idle']} / {b['loaded']} / {b['peak']} / {b['after']} MiB**" if b else "n/a")
        + f" (goal <= {GOAL_MIB} MiB in every phase: {verdict}).",
        f"- Cache per session (workers' pongs): **{cps:,} bytes** ({cps / MIB:.2f} MiB)"
        + (";" if result["standalone"] else "."),
    ]
    if result["standalone"] is None:
        models = c.get("two_pass_models", {})
        lines += [
            f"- Models loaded by the host and shared by every worker: the streaming model `{c['model']}` and "
            + ", ".join(f"`{Path(v).name}` ({k.removesuffix('_model')})" for k, v in models.items())
            + f". Sessions: mode `{c.get('session_mode', 'online')}` on synth_sentences audio (sentences of 2-5 s), so "
            "*peak* includes offline decodes. No standalone probe in this mode.",
        ]
    else:
        lines[-1] += (
            f" in-process `StreamingModel.cache_nbytes` after {len(result['standalone']['cache_bytes_by_stride'])} "
            f"strides: {h['cache_bytes_per_session_inprocess']:,} bytes; by stride: "
            f"{result['standalone']['cache_bytes_by_stride']}."
        )
        lines += [
        f"- One worker without fork sharing (a process that imports and loads on its own, then runs the same "
        f"strides): RSS {h['standalone_worker_rss_mib']} MiB, of which {h['standalone_worker_anonymous_mib']} MiB "
        f"anonymous. {c['workers']} such workers (anonymous memory each, library pages once) + the API process "
        f"≈ {h['without_sharing_estimate_mib']:.0f} MiB, against "
        f"{t['loaded']:.0f} MiB total PSS measured with sharing.",
        f"- Model: {result['standalone']['params']:,} parameters, {result['standalone']['param_bytes'] / MIB:.0f} MiB of weights.",
        ]
    lines += [
        "",
        "Largest private mappings of each worker while loaded (MiB, from /proc/PID/smaps):",
        "",
        "| worker | mapping | private dirty | private clean | RSS |",
        "|---|---|---:|---:|---:|",
    ]
    for role, rows in result["load"]["mappings_loaded"].items():
        for row in rows[:5]:
            lines.append(f"| {role} | `{row['name']}` ({row['mappings']}) | {row['private_dirty']} | {row['private_clean']} | {row['rss']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- main


def named_model(spec: str) -> tuple[str, Path]:
    """The model's name in the result files (the kind, or the directory's name) and its directory."""
    path = resolve_model(spec)
    return (spec, path) if spec in KINDS else (path.resolve().name, path.resolve())


def sentence_models(model: str) -> dict[str, Path]:
    """The 2pass models that go with `model` (large-random: the large ones; anything else: the tiny ones)."""
    size = "large" if "large" in model else "tiny"
    return {"vad_model": resolve_model("vad"), "offline_model": resolve_model(f"offline-{size}-random"),
            "punc_model": resolve_model(f"punc-{size}-random")}


def measure(model: str, model_dir: Path, workers: int, sessions: int, seconds: float, speed: float,
            two_pass: bool = False) -> dict[str, Any]:
    settings: dict[str, Any] = sentence_models(model) if two_pass else {}
    with Service(model_dir, workers, **settings) as service:
        time.sleep(1.0)  # let start-up settle and a few pongs arrive
        worker_pids = [w["pid"] for w in sorted(service.workers(), key=lambda w: w["slot"])]
        roles = find_processes(service.pid, worker_pids)
        idle = snapshot(roles)
        others = {"idle": other_torch_processes(set(roles.values()))}
        load = asyncio.run(stream_sessions(service, roles, sessions, seconds, speed, two_pass))
        time.sleep(1.0)  # the workers drop caches at the final; let pongs report it
        after = snapshot(roles)
        others["loaded"] = load.pop("other_torch_processes_loaded")
        others["after"] = other_torch_processes(set(roles.values()))
        after_workers = service.workers()
        api_pid = roles["api"]
    leftovers = [n for n in list_segments() if n.startswith(f"parastream_{api_pid}_")]  # ours only, after stop
    return {
        "processes": roles,
        "phases": {"idle": idle, "loaded": load.pop("loaded"), "after": after},
        "load": load,
        "other_torch_processes": others,
        "workers_after": after_workers,
        "shm_leftovers": leftovers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="large-random", help=f"{' | '.join(KINDS)} | a model dir")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions, spread over the workers")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per session")
    parser.add_argument("--speed", type=float, default=1.0, help="pace relative to real time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--two-pass", action="store_true", help="also load the VAD, offline and punctuation models")
    parser.add_argument("--probe", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # internal: the standalone probe
    parser.add_argument("--probe-strides", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(args.probe, args.sessions, args.probe_strides)
        return 0

    model, model_dir = named_model(args.model)
    result: dict[str, Any] = {"conditions": conditions(model, model_dir, args.workers, args.sessions, args.seconds, args.speed)}
    if args.two_pass:
        result["conditions"]["two_pass_models"] = {k: str(v) for k, v in sentence_models(model).items()}
        result["conditions"]["session_mode"] = "2pass"
    result.update(measure(model, model_dir, args.workers, args.sessions, args.seconds, args.speed, args.two_pass))
    # After the service is gone, so the probe's load does not compete with the measured processes.
    per_worker = -(-args.sessions // args.workers)
    result["standalone"] = None if args.two_pass else run_probe(model_dir, per_worker)
    result["headline"] = headline(result["phases"], result["load"], result["standalone"], args.workers)
    if result["shm_leftovers"]:
        print(f"WARNING: shared-memory segments left behind: {result['shm_leftovers']}", file=sys.stderr)
    if any(o != "final" for o in result["load"]["outcomes"]):
        print(f"WARNING: not every session ended with a final: {result['load']['outcomes']}", file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"memory-2pass-{model}" if args.two_pass else f"memory-{model}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {args.out / f'{stem}.json'} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
