"""What crash recovery costs per stride: the snapshot a worker saves after each stride, against the stride itself.

    python -m benchmarks.snapshot_cost --model large-random [--strides 30]

It runs the worker's own code path (`WorkerCore` with a real ring and snapshot segment) on one session, single
threaded as a worker is, and times the model step and the snapshot save of every stride separately. The result
goes to benchmarks/results/snapshot-cost-<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def measure(model_dir: Path, strides: int) -> dict[str, object]:
    import torch

    from benchmarks.audio import synth_speechlike
    from engine.messages import CloseSession, OpenSession, StreamOptions, StrideDone
    from engine.model.adapter import StreamingModel
    from engine.ring import RingWriter
    from engine.worker.core import WorkerCore

    torch.set_num_threads(1)
    core = WorkerCore(StreamingModel.load(str(model_dir)))
    ring = RingWriter.create(16000 * (strides + 2) * 6 // 10 + 16000)
    try:
        core.open(OpenSession("bench", ring.name, StreamOptions()))
        ring.write(synth_speechlike(strides * 0.6, seed=5).tobytes())
        core.close(CloseSession("bench", ring.write_pos))
        done: list[StrideDone] = []
        while "bench" in core.sessions:
            done += [m for m in core.run_once() if isinstance(m, StrideDone)]
        steady = [m for m in done if not m.final][5:]  # the encoder cache is full from the 5th stride on
        compute = [m.compute_s * 1000 for m in steady]
        snapshot = [m.snapshot_s * 1000 for m in steady]
        ratio = [s / c * 100 for s, c in zip(snapshot, compute)]
        return {
            "model": model_dir.name,
            "strides_timed": len(steady),
            "stride_compute_ms_median": round(statistics.median(compute), 2),
            "snapshot_ms_median": round(statistics.median(snapshot), 3),
            "snapshot_ms_max": round(max(snapshot), 3),
            "snapshot_percent_of_stride_median": round(statistics.median(ratio), 2),
            "snapshot_percent_of_stride_max": round(max(ratio), 2),
            "threads": 1,
        }
    finally:
        core.drop_all()
        ring.unlink()


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import RESULTS, git_commit, machine, resolve_model
    from benchmarks.report import versions

    parser = argparse.ArgumentParser(prog="python -m benchmarks.snapshot_cost")
    parser.add_argument("--model", default="large-random")
    parser.add_argument("--strides", type=int, default=30)
    args = parser.parse_args(argv)
    model_dir = resolve_model(args.model)
    result = {"commit": git_commit(), "machine": machine(), "versions": versions(), **measure(model_dir, args.strides)}
    name = f"snapshot-cost-{model_dir.name.removesuffix('-seed0')}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Snapshot cost per stride ({result['model']})", "",
             f"Machine: {result['machine']}; commit `{result['commit']}`; one thread, as in a worker.", "",
             "| figure | value |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in result.items() if k not in ("commit", "machine", "versions")]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
