"""The encoder of one batched stride on each candidate runtime, in one process, side by side.

    python -m benchmarks.runtime_compare --model large-random    # writes results/runtime-<model>.{md,json}

The encoder is ~80 % of a stride. Each candidate runs the same computation, `engine.model.onnx_encoder.EncoderStack`
(FunASR's encoder layers over a padded batch, attention caches in and out) on the same inputs: B sessions, a
15-frame chunk each, a full 40-frame key/value cache. Rounds alternate between the candidates, so a slow spell of
this VM hits them all alike; each figure is the median of the rounds. One thread (a worker's share of a core).

- `torch eager fp32`: PyTorch eager, FunASR's own modules (the `torch` backend's batched path).
- `onnxruntime fp32`: the exported graph on ONNX Runtime (the `onnx` backend); the largest difference from eager
  in the encoder output is reported.
- `torch eager int8`: `PARASTREAM_PRECISION=int8` (`engine.model.precision`: per-channel int8 weights, per-row
  activation scales); the relative L2 difference from fp32 is reported (a random model: a cost, not an accuracy).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, Timer, resolve_model

DEFAULT_BATCHES = (1, 2, 4, 8, 16)


def compare(model_dir: Path, batches: list[int], rounds: int) -> dict[str, Any]:
    import torch

    from engine.model import onnx_encoder
    from engine.model.adapter import load_automodel
    from engine.model.precision import set_precision

    torch.set_num_threads(1)
    encoder = load_automodel(str(model_dir)).model.encoder
    stack = onnx_encoder.EncoderStack(encoder).eval()
    int8 = copy.deepcopy(stack)
    set_precision(int8, "int8")
    with tempfile.TemporaryDirectory() as tmp:
        with Timer() as export:
            path = onnx_encoder._export(encoder, Path(tmp) / "encoder.onnx")
        runtime = onnx_encoder.OnnxEncoder(path, threads=1)
    layers, heads, d_k = onnx_encoder.cache_shape(encoder)
    rows = []
    for b in batches:
        g = torch.Generator().manual_seed(b)
        inputs = (
            torch.randn(b, 15, stack.layers[0].in_size, generator=g), torch.ones(b, 15),
            torch.randn(layers, b, heads, 40, d_k, generator=g), torch.randn(layers, b, heads, 40, d_k, generator=g),
            torch.ones(b, 40),
        )
        candidates = {
            "torch eager fp32": lambda: stack(*inputs),
            "onnxruntime fp32": lambda: runtime(*inputs),
            "torch eager int8": lambda: int8(*inputs),
        }
        times: dict[str, list[float]] = {name: [] for name in candidates}
        with torch.no_grad():
            outputs = {name: run()[0] for name, run in candidates.items()}  # warm-up, and the numbers compared
            for _ in range(rounds):
                for name, run in candidates.items():
                    with Timer() as timer:
                        run()
                    times[name].append(timer.wall_ms)
        exact = outputs["torch eager fp32"]
        rows.append({
            "batch": b,
            "ms": {name: round(statistics.median(v), 1) for name, v in times.items()},
            "onnx_max_abs_diff": float((outputs["onnxruntime fp32"] - exact).abs().max()),
            "int8_relative_l2": float((outputs["torch eager int8"] - exact).norm() / exact.norm()),
        })
    import onnxruntime

    return {"model": model_dir.name, "threads": 1, "rounds": rounds, "export_s": round(export.wall_s, 1),
            "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}, "rows": rows}


def markdown(r: dict[str, Any]) -> str:
    names = list(r["rows"][0]["ms"])
    lines = [f"# The batched encoder on each runtime: `{r['model']}`, {r['threads']} thread", "",
             f"`python -m benchmarks.runtime_compare`; median of {r['rounds']} alternating rounds; B sessions of a "
             "15-frame chunk with a 40-frame cache; versions " + ", ".join(f"{k} {v}" for k, v in r["versions"].items())
             + f"; export took {r['export_s']} s.", "",
             "| B | " + " | ".join(f"{n}, ms" for n in names) + " | onnx speed-up | int8 speed-up | onnx max abs diff | "
             "int8 rel. L2 diff |", "|---:|" + "---:|" * (len(names) + 4)]
    for row in r["rows"]:
        ms = row["ms"]
        base = ms["torch eager fp32"]
        lines.append(f"| {row['batch']} | " + " | ".join(str(ms[n]) for n in names)
                     + f" | {base / ms['onnxruntime fp32']:.2f}x | {base / ms['torch eager int8']:.2f}x | "
                       f"{row['onnx_max_abs_diff']:.1e} | {row['int8_relative_l2']:.2%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runtime_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="large-random")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--name", help="result file stem (default: runtime-<model>)")
    args = parser.parse_args(argv)
    model_dir = Path(resolve_model(args.model))
    result = compare(model_dir, args.batch_sizes, args.rounds)
    name = args.name or f"runtime-{model_dir.name.removesuffix('-seed0')}"
    out = RESULTS / name if "/" not in name else Path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
