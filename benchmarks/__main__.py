"""`python -m benchmarks`: run the comparison and write the results.

    python -m benchmarks run --model tiny-random            # full capacity search, all systems
    python -m benchmarks run --model large-random
    python -m benchmarks run --model tiny-random --quick    # the smoke run the test suite uses (~1-2 min)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmarks.common import RESULTS, resolve_model
from benchmarks.report import write
from benchmarks.run import RunConfig, run_benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="benchmark every system on one model")
    run.add_argument("--model", default="tiny-random", help="tiny-random, large-random, or a model dir")
    run.add_argument("--quick", action="store_true", help="N = 1 and 2 only, 3 s clips: a smoke run")
    run.add_argument("--systems", nargs="*", help="subset of system names")
    run.add_argument("--max-streams", type=int, default=64)
    run.add_argument("--clip-seconds", type=float, default=12.0)
    run.add_argument("--out", type=Path, default=RESULTS)
    run.add_argument("--name", help="result file stem (default: bench-<model>[-quick])")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # A log line per request would cost the load generator CPU that belongs to the systems under test.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    model_dir = resolve_model(args.model)
    config = RunConfig(model_dir=model_dir, systems=args.systems, max_streams=args.max_streams,
                       clip_seconds=args.clip_seconds)
    if args.quick:
        config.clip_seconds, config.distinct_clips, config.fixed_ns = 3.0, 2, [1, 2]
        config.bound_strides, config.bound_threads, config.light_load_trials = 8, [1], 1
    config.extra["mode"] = "quick" if args.quick else "full"
    result = run_benchmark(config)
    name = args.name or f"bench-{Path(model_dir).name.removesuffix('-seed0')}{'-quick' if args.quick else ''}"
    for path in write(result, args.out, name):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
