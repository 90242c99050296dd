"""The in-process bound: how many real-time streams could this machine carry if serving cost nothing?

    python -m benchmarks.bound --model large-random [--threads 1,2] [--strides 40] [--json OUT]

`--model` takes a model directory, or `tiny-random` / `large-random`. From Python: `measure_bound(model_dir,
strides=40, threads=None)` returns a dict. What each figure measures, what it leaves out, and how to read the gap
between the bounds: docs/benchmarks.md, "The in-process bound". This module measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ROOT,
    Timer,
    git_commit,
    l3_cache,
    machine,
    now_utc,
    package_versions,
    resolve_model,
    summary_stats,
    usable_cores,
)

STRIDE_MS = 600.0  # one stride of the default chunk_size (0, 10, 5): 10 LFR frames of 60 ms
DEFAULT_WARMUP = 5
DEFAULT_MATMUL_SIZES = (1024, 2048, 4096)
DEFAULT_MATMUL_REPS = 3
FFN_BATCHES = (1, 4, 16)
READ_BUFFER_MIB = 512
AUDIO_SEED = 7
SCHEMA = "parastream.bound/1"

__all__ = ["measure_bound", "derive", "machine_info", "main"]


# ------------------------------------------------------------------------------------------------ parent side


def measure_bound(
    model_dir: Path,
    strides: int = 40,
    threads: list[int] | None = None,
    *,
    warmup: int = DEFAULT_WARMUP,
    matmul_sizes: tuple[int, ...] | list[int] = DEFAULT_MATMUL_SIZES,
    matmul_reps: int = DEFAULT_MATMUL_REPS,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Measure the in-process bound of ``model_dir`` at each thread count (default: 1 and all cores).

    One fresh subprocess per thread count, run one after another. Returns a JSON-serialisable dict:
    ``machine``, ``model``, ``settings``, ``by_threads`` (``{"1": {...}, "2": {...}}``: per-stride times, split,
    matmul peak, extras), ``flops`` (per stride, counted and analytic) and ``derived`` (the bounds). See the
    module docstring for what each figure means.
    """
    model_dir = Path(model_dir).expanduser().resolve()
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {str(model_dir)!r} does not exist")
    if strides < 1:
        raise ValueError("strides must be >= 1")
    if warmup < 0:
        raise ValueError("warmup must be >= 0")
    cores = usable_cores()
    thread_counts = sorted(set(threads)) if threads else sorted({1, cores})
    if any(t < 1 for t in thread_counts):
        raise ValueError(f"thread counts must be >= 1, got {thread_counts}")
    sizes = [int(n) for n in matmul_sizes]
    if not sizes or any(n < 1 for n in sizes) or matmul_reps < 1:
        raise ValueError("need at least one matmul size >= 1 and matmul_reps >= 1")

    by_threads: dict[str, dict[str, Any]] = {}
    for t in thread_counts:
        spec = {
            "model_dir": str(model_dir),
            "threads": t,
            "strides": strides,
            "warmup": warmup,
            "matmul_sizes": sizes,
            "matmul_reps": matmul_reps,
        }
        by_threads[str(t)] = _run_worker(spec, timeout_s)

    first = by_threads[str(thread_counts[0])]
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "machine": machine_info(),
        "model": {"dir": str(model_dir), "name": model_dir.name, **first["model"]},
        "settings": {
            "strides": strides,
            "warmup_strides": warmup,
            "stride_ms": STRIDE_MS,
            "chunk_size": first["chunk_size"],
            "threads": thread_counts,
            "matmul_sizes": sizes,
            "matmul_reps": matmul_reps,
            "audio": f"synth_speechlike(seed={AUDIO_SEED}), one session",
        },
        "by_threads": {k: {key: v for key, v in run.items() if key not in ("model", "flops", "chunk_size")}
                       for k, run in by_threads.items()},
        # FLOPs depend on the audio and the model only, not on the thread count: take the first run's.
        "flops": first["flops"],
    }
    counted = {k: run["flops"]["counted_per_stride"] for k, run in by_threads.items()}
    result["flops"]["counted_per_stride_by_threads"] = counted
    result["derived"] = derive(result, cores)
    return result


def derive(result: dict[str, Any], cores: int) -> dict[str, Any]:
    """The bounds, from ``by_threads`` and ``flops`` of a :func:`measure_bound` result (pure arithmetic)."""
    runs = result["by_threads"]
    flops = float(result["flops"]["counted_per_stride"])
    gflops_per_stream = flops / (STRIDE_MS / 1000.0) / 1e9  # GFLOP/s one real-time stream needs
    one = runs.get("1")
    all_cores = runs.get(str(cores))
    out: dict[str, Any] = {
        "cores": cores,
        "gflops_per_realtime_stream": gflops_per_stream,
        "streams_compute_bound": None,
        "streams_compute_bound_formula": "cores x 600 / median_ms at 1 thread "
                                         "(one single-thread batch-1 pipeline per core)",
        "streams_compute_bound_one_process": None,
        "streams_compute_bound_one_process_formula": f"600 / median_ms at {cores} threads "
                                                     "(one batch-1 pipeline on all cores)",
        "streams_flop_bound": None,
        "streams_flop_bound_formula": "peak_gflops_all_cores / (counted flops per stride / 0.6 s / 1e9)",
        "peak_gflops_all_cores": None,
        "peak_gflops_all_cores_source": None,
        "rtf_by_threads": {k: r["stride_ms"]["median"] / STRIDE_MS for k, r in runs.items()},
        "achieved_gflops_1thread": None,
        "flop_efficiency_1thread": None,
        "weight_read_floor_ms_1thread": None,
    }
    if one is not None:
        median_1 = one["stride_ms"]["median"]
        out["streams_compute_bound"] = cores * STRIDE_MS / median_1
        out["achieved_gflops_1thread"] = flops / (median_1 / 1000.0) / 1e9
        out["flop_efficiency_1thread"] = out["achieved_gflops_1thread"] / one["matmul"]["peak_gflops"]
        model = result.get("model")
        if model and one.get("read_gbs"):
            touched_bytes = model["weights_mib"] * 2**20 - model["params_embedding"] * 4  # fp32 embedding table
            out["weight_read_floor_ms_1thread"] = touched_bytes / (one["read_gbs"] * 1e9) * 1000.0
    if all_cores is not None:
        out["streams_compute_bound_one_process"] = STRIDE_MS / all_cores["stride_ms"]["median"]
        out["peak_gflops_all_cores"] = all_cores["matmul"]["peak_gflops"]
        out["peak_gflops_all_cores_source"] = f"measured at {cores} threads"
    elif one is not None:
        out["peak_gflops_all_cores"] = cores * one["matmul"]["peak_gflops"]
        out["peak_gflops_all_cores_source"] = f"extrapolated: {cores} x the 1-thread peak ({cores} threads not run)"
    if out["peak_gflops_all_cores"] is not None and gflops_per_stream > 0:
        out["streams_flop_bound"] = out["peak_gflops_all_cores"] / gflops_per_stream
    return out


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, last-level cache, OS and package versions (without importing torch)."""
    return {
        "date": now_utc(),
        "git_commit": git_commit(mark_dirty=False),
        **machine(),
        "l3_cache": l3_cache(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **package_versions(("torch", "funasr", "numpy", "kaldi-native-fbank"), missing=None),
    }


def _run_worker(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    t = spec["threads"]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(t)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix="parastream-bound-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.bound", "--_worker", json.dumps(spec), "--_out", str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout or "")[-3000:]
            raise RuntimeError(f"bound worker ({t} threads) failed with exit code {proc.returncode}:\n{tail}")
        return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------ worker side


class _Probe:
    """Wraps the pieces ``StreamingModel.step`` calls, to time them (and count their FLOPs when asked)."""

    PARTS = ("frontend", "encoder", "predictor", "decoder")

    def __init__(self) -> None:
        self.ms: dict[str, float] = dict.fromkeys(self.PARTS, 0.0)
        self.flops: dict[str, int] = dict.fromkeys(self.PARTS, 0)
        self.shapes: dict[str, Any] = {}
        self.flop_mode: Any = None

    def reset(self) -> None:
        self.ms = dict.fromkeys(self.PARTS, 0.0)
        self.flops = dict.fromkeys(self.PARTS, 0)
        self.shapes = {}

    def wrap(self, part: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            f0 = self.flop_mode.get_total_flops() if self.flop_mode is not None else 0
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            self.ms[part] += (time.perf_counter() - t0) * 1000.0
            if self.flop_mode is not None:
                self.flops[part] += self.flop_mode.get_total_flops() - f0
            if part == "encoder":
                self.shapes["encoder_frames"] = int(result[0].shape[1])
            elif part == "decoder":
                self.shapes["decoder_tokens"] = int(args[1].shape[1])  # forward_chunk(encoder_out, embeds, cache)
            return result

        return wrapped


def _install_probe(sm: Any) -> _Probe:
    import engine.model.adapter as adapter

    probe = _Probe()
    model = sm.model
    adapter.extract_fbank = probe.wrap("frontend", adapter.extract_fbank)  # step() looks it up in the module
    model.encoder.forward_chunk = probe.wrap("encoder", model.encoder.forward_chunk)
    model.predictor.forward_chunk = probe.wrap("predictor", model.predictor.forward_chunk)
    model.decoder.forward_chunk = probe.wrap("decoder", model.decoder.forward_chunk)
    return probe


def _analytic_flops(model: Any, encoder_frames: int, decoder_tokens: int) -> dict[str, int]:
    """2 x weight elements x rows processed, for every Linear / Conv1d (biases and attention products ignored)."""
    import torch

    parts = {"encoder": 0, "predictor": 0, "decoder": 0}
    for part in parts:
        for name, mod in getattr(model, part).named_modules():
            if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d)):
                continue
            if part == "decoder":
                rows = encoder_frames if "src_attn.linear_k_v" in name else decoder_tokens
            else:
                rows = encoder_frames
            parts[part] += 2 * mod.weight.numel() * rows
    return parts


def _matmul_peak(sizes: list[int], reps: int) -> dict[str, Any]:
    import torch

    by_size = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        c = torch.empty(n, n)
        torch.mm(a, b, out=c)  # warm-up: first-call setup, page faults
        rates = []
        for _ in range(reps):
            with Timer() as timer:
                torch.mm(a, b, out=c)
            rates.append(2.0 * n**3 / timer.wall_s / 1e9)
        by_size[str(n)] = {"best_gflops": max(rates), "median_gflops": sorted(rates)[len(rates) // 2]}
        del a, b, c
    best = max(by_size, key=lambda k: by_size[k]["best_gflops"])
    return {"peak_gflops": by_size[best]["best_gflops"], "peak_at_n": int(best), "reps": reps, "by_size": by_size}


def _ffn_gemm(model: Any, frames: int, reps: int = 3) -> dict[str, Any]:
    """The encoder's own feed-forward GEMMs (every layer in turn) at B sessions x ``frames`` rows."""
    import torch

    layers = [(blk.feed_forward.w_1, blk.feed_forward.w_2) for blk in model.encoder.encoders]
    d_in = layers[0][0].in_features
    weight_bytes = sum((w1.weight.numel() + w2.weight.numel()) * 4 for w1, w2 in layers)
    flops_per_row = sum(2 * (w1.weight.numel() + w2.weight.numel()) for w1, w2 in layers)
    out: dict[str, Any] = {"layers": len(layers), "weight_mib": weight_bytes / 2**20, "by_batch": {}}
    with torch.no_grad():
        for batch in FFN_BATCHES:
            x = torch.randn(batch * frames, d_in)
            best = float("inf")
            for _ in range(reps + 1):  # first pass is a warm-up
                with Timer() as timer:
                    for w1, w2 in layers:
                        w2(torch.relu(w1(x)))
                best = min(best, timer.wall_s)
            out["by_batch"][str(batch)] = {
                "rows": batch * frames,
                "ms": best * 1000.0,
                "gflops": flops_per_row * batch * frames / best / 1e9,
                "ms_per_session": best * 1000.0 / batch,
            }
    return out


def _read_bandwidth(mib: int = READ_BUFFER_MIB, reps: int = 5) -> float:
    import torch

    x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(reps + 1):
        with Timer() as timer:
            x.sum()
        best = min(best, timer.wall_s)
    return x.numel() * 4 / best / 1e9


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    threads = int(spec["threads"])
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.audio import synth_speechlike, to_float32
    from engine.messages import StreamOptions
    from engine.model.adapter import StreamingModel

    with Timer() as loading:
        sm = StreamingModel.load(spec["model_dir"], device="cpu", ncpu=threads)
    load_s = loading.wall_s
    torch.set_num_threads(threads)  # AutoModel set it from ncpu already; make sure
    model = sm.model
    probe = _install_probe(sm)

    opts = StreamOptions()
    stride = opts.stride_samples
    warmup, strides = int(spec["warmup"]), int(spec["strides"])
    total = warmup + strides + 1  # + 1 for the FLOP-counted step
    audio = to_float32(synth_speechlike(total * stride / 16000.0, seed=AUDIO_SEED))
    pieces = [audio[i * stride : (i + 1) * stride] for i in range(total)]

    cache = sm.new_cache(opts)
    for piece in pieces[:warmup]:
        sm.step(cache, piece, False, opts)

    wall, cpu, tokens = [], [], []
    split: dict[str, list[float]] = {p: [] for p in (*_Probe.PARTS, "other")}
    for piece in pieces[warmup : warmup + strides]:
        probe.reset()
        with Timer() as timer:
            toks = sm.step(cache, piece, False, opts)
        cpu.append(timer.cpu_ms)
        wall.append(timer.wall_ms)
        tokens.append(len(toks))
        for part in _Probe.PARTS:
            split[part].append(probe.ms[part])
        split["other"].append(max(0.0, timer.wall_ms - sum(probe.ms.values())))

    # One more warm step under the FLOP counter (not timed: the counter slows every op).
    probe.reset()
    with FlopCounterMode(display=False) as mode:
        probe.flop_mode = mode
        sm.step(cache, pieces[-1], False, opts)
        probe.flop_mode = None
    counted = int(mode.get_total_flops())
    by_op = {str(op): int(n) for op, n in mode.get_flop_counts().get("Global", {}).items()}
    enc_frames = int(probe.shapes.get("encoder_frames", 0))
    dec_tokens = int(probe.shapes.get("decoder_tokens", 0))
    analytic = _analytic_flops(model, enc_frames, dec_tokens)

    def params(mod: Any) -> int:
        return sum(p.numel() for p in mod.parameters())

    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    matmul = _matmul_peak(list(spec["matmul_sizes"]), int(spec["matmul_reps"]))
    ffn = _ffn_gemm(model, frames=enc_frames or 15)
    read_gbs = _read_bandwidth()

    return {
        "threads": threads,
        "torch_num_threads": torch.get_num_threads(),
        "load_s": load_s,
        "stride_ms": summary_stats(wall),
        "cpu_ms": summary_stats(cpu),
        "split_ms": {part: summary_stats(v) for part, v in split.items()},
        "tokens_per_stride_mean": float(np.mean(tokens)),
        "matmul": matmul,
        "ffn_gemm": ffn,
        "read_gbs": read_gbs,
        "chunk_size": list(opts.chunk_size),
        "model": {
            "params_total": params(model),
            "params": {part: params(getattr(model, part)) for part in ("encoder", "predictor", "decoder")},
            "params_embedding": embedding,
            "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
            "torch_mkl": bool(torch.backends.mkl.is_available()),
            "torch_mkldnn": bool(torch.backends.mkldnn.is_available()),
        },
        "flops": {
            "counted_per_stride": counted,
            "counted_by_part": dict(probe.flops),
            "counted_by_op": by_op,
            "analytic_per_stride": sum(analytic.values()),
            "analytic_by_part": analytic,
            "counted_over_analytic": counted / sum(analytic.values()) if sum(analytic.values()) else None,
            "encoder_frames": enc_frames,
            "decoder_tokens": dec_tokens,
            "counter": "torch.utils.flop_counter.FlopCounterMode: mm/addmm/bmm/convolution only",
            "not_counted": "element-wise ops, softmax/log-softmax, layer norm, the CIF loop, embedding lookups, "
                           "cache copies/concatenation, the fbank frontend (kaldi-native-fbank, outside torch)",
            "analytic_formula": "sum over Linear/Conv1d of 2 x weight elements x rows; encoder/predictor rows = "
                                "encoder frames, decoder rows = tokens (src-attn k/v: encoder frames)",
        },
    }


# -------------------------------------------------------------------------------------------------------- CLI


def _resolve_model(arg: str) -> Path:
    path = resolve_model(arg)
    if not path.exists():
        raise SystemExit(f"--model {arg!r}: no such directory (or use tiny-random / large-random)")
    return path


def summary(result: dict[str, Any]) -> str:
    """A short human-readable report of a :func:`measure_bound` result."""
    m, d, f = result["machine"], result["derived"], result["flops"]
    lines = [
        f"model {result['model']['name']}: {result['model']['params_total'] / 1e6:.2f} M params; "
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; torch {m['torch']}, funasr {m['funasr']}",
    ]
    for k, r in result["by_threads"].items():
        s, sp = r["stride_ms"], r["split_ms"]
        ffn = r["ffn_gemm"]["by_batch"]
        lines.append(
            f"{k} thread(s): stride median {s['median']:.1f} / p95 {s['p95']:.1f} / mean {s['mean']:.1f} ms "
            f"(cpu {r['cpu_ms']['median']:.1f} ms); split median ms: "
            + ", ".join(f"{p} {sp[p]['median']:.1f}" for p in sp)
        )
        lines.append(
            f"    matmul peak {r['matmul']['peak_gflops']:.1f} GFLOP/s (n={r['matmul']['peak_at_n']}); "
            f"encoder FFN GEMM GFLOP/s at B sessions: "
            + ", ".join(f"B={b} {v['gflops']:.1f}" for b, v in ffn.items())
            + f"; read {r['read_gbs']:.1f} GB/s"
        )
    lines.append(
        f"FLOPs per stride: counted {f['counted_per_stride'] / 1e9:.3f} G, "
        f"analytic {f['analytic_per_stride'] / 1e9:.3f} G (ratio {f['counted_over_analytic']:.2f}; "
        f"{f['encoder_frames']} encoder frames, {f['decoder_tokens']} tokens); "
        f"{d['gflops_per_realtime_stream']:.2f} GFLOP/s per real-time stream"
    )

    def fmt(x: Any) -> str:
        return "n/a" if x is None else f"{x:.1f}"

    lines.append(
        f"streams: compute bound {fmt(d['streams_compute_bound'])} (one 1-thread pipeline per core), "
        f"{fmt(d['streams_compute_bound_one_process'])} (one process, all cores); "
        f"FLOP bound {fmt(d['streams_flop_bound'])} (peak {fmt(d['peak_gflops_all_cores'])} GFLOP/s, "
        f"{d['peak_gflops_all_cores_source']})"
    )
    if d["weight_read_floor_ms_1thread"] is not None:
        lines.append(
            f"1 thread: {d['achieved_gflops_1thread']:.1f} GFLOP/s achieved ({100 * d['flop_efficiency_1thread']:.0f}% "
            f"of peak); reading the weights once would take {d['weight_read_floor_ms_1thread']:.1f} ms per stride"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bound", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory, or tiny-random / large-random")
    parser.add_argument("--strides", type=int, default=40, help="timed strides per thread count (default 40)")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed strides first (default 5)")
    parser.add_argument("--threads", help="comma-separated thread counts (default: 1 and all cores)")
    parser.add_argument("--matmul-sizes", default=",".join(map(str, DEFAULT_MATMUL_SIZES)),
                        help="square matmul sizes for the fp32 peak (default 1024,2048,4096)")
    parser.add_argument("--json", type=Path, help="write the full result here")
    parser.add_argument("--_worker", help=argparse.SUPPRESS)
    parser.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker is not None:
        result = _worker(json.loads(args._worker))
        args._out.write_text(json.dumps(result))
        return 0
    if not args.model:
        parser.error("--model is required")
    threads = [int(t) for t in args.threads.split(",")] if args.threads else None
    sizes = [int(n) for n in args.matmul_sizes.split(",")]
    result = measure_bound(_resolve_model(args.model), strides=args.strides, threads=threads,
                           warmup=args.warmup, matmul_sizes=sizes)
    print(summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
