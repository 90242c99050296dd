"""Cost of a stride over a session's life, end to end through the service.

    python -m benchmarks.long_session --model tiny-random --minutes 60    # writes results/long-session-<model>.{md,json}

One session on a one-worker service is fed ``--minutes`` of speech-like audio as fast as the service takes it
(1 s appends, waiting out 429s), and subscribes to its events with ``?progress=true``, so that every stride announces
itself (a `partial` or an id-less `progress` event carrying `samples_processed`). The worker is never idle, so the
wall time between announcements is what one stride costs the whole service: the model, the worker's bookkeeping and
snapshot, the pipe, the API process and the SSE stream. The report gives that cost over the 1st, 10th, 30th and 60th
minute of audio (and the last one, for shorter runs), and the size of the partial events there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.client import ParastreamClient
from benchmarks.audio import synth_speechlike
from benchmarks.common import RESULTS, resolve_model
from benchmarks.systems import RunningSystem, SystemSpec
from engine.units import SAMPLE_RATE, STRIDE_SAMPLES

MARKS = (1, 10, 30, 59, 60)


async def _feed(client: ParastreamClient, session_id: str, minutes: int) -> None:
    for minute in range(minutes):
        pcm = synth_speechlike(60.0, seed=1000 + minute)
        for start in range(0, len(pcm), SAMPLE_RATE):
            while True:
                try:
                    await client.append(session_id, pcm[start : start + SAMPLE_RATE])
                    break
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code != 429:
                        raise
                    await asyncio.sleep(0.02)  # the ring is full: the worker is busy, which is the point
    await client.close(session_id)


async def _measure(base_url: str, minutes: int) -> list[tuple[float, int, int]]:
    """(wall time, samples processed, bytes of the event's JSON) for every stride's event."""
    seen: list[tuple[float, int, int]] = []
    async with ParastreamClient(base_url, timeout=120) as client:
        session = await client.create_session()
        feeder = asyncio.create_task(_feed(client, session["id"], minutes))
        async for event in client.events(session["id"], progress=True):
            if "samples_processed" in event.data:
                seen.append((time.monotonic(), int(event.data["samples_processed"]), len(json.dumps(event.data, ensure_ascii=False))))
        await feeder
    return seen


def _window(seen: list[tuple[float, int, int]], start_minute: int) -> dict[str, Any]:
    lo, hi = (start_minute - 1) * 60 * SAMPLE_RATE, start_minute * 60 * SAMPLE_RATE
    inside = [s for s in seen if lo <= s[1] < hi]
    if len(inside) < 2:
        return {}
    strides = (inside[-1][1] - inside[0][1]) / STRIDE_SAMPLES
    partials = [s[2] for s in inside if s[2] > 40]  # progress events are ~30 bytes; partials carry text
    # Each announcement covers one stride; the median gap is robust to the odd pause (a collection, the OS).
    gaps = [1000 * (b[0] - a[0]) * STRIDE_SAMPLES / (b[1] - a[1]) for a, b in zip(inside, inside[1:]) if b[1] > a[1]]
    return {
        "minute": start_minute,
        "ms_per_stride": round(1000 * (inside[-1][0] - inside[0][0]) / strides, 2),
        "ms_per_stride_median": round(statistics.median(gaps), 2),
        "strides": int(strides),
        "partial_event_bytes_max": max(partials, default=0),
    }


def _trend(seen: list[tuple[float, int, int]], minutes: int) -> dict[str, Any]:
    """A straight line through every minute's median stride cost: the growth it implies from minute 1 to the last.
    One minute's figure moves by ±10 % from run to run on this VM; the line over all of them is far steadier."""
    per_minute = [(m, w["ms_per_stride_median"]) for m in range(1, minutes + 1) if (w := _window(seen, m))]
    if len(per_minute) < 3:
        return {}
    x, y = np.array([m for m, _ in per_minute], float), np.array([v for _, v in per_minute])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    slope_se = float(np.sqrt(residual.var(ddof=2) / ((x - x.mean()) ** 2).sum()))
    at = lambda m: slope * m + intercept  # noqa: E731
    return {
        "minutes_fitted": len(per_minute),
        "ms_at_first": round(float(at(1)), 3),
        "ms_at_last": round(float(at(x[-1])), 3),
        "growth": round(float(at(x[-1]) / at(1) - 1), 4),
        "growth_95ci": round(float(1.96 * slope_se * (x[-1] - 1) / at(1)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.long_session")
    parser.add_argument("--model", default="tiny-random", help="tiny-random, large-random, or a model dir")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--name", help="result file stem (default: long-session-<model>)")
    parser.add_argument("--label", default="", help="a note stored with the result (what code was measured)")
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    model_dir = resolve_model(args.model)
    spec = SystemSpec("parastream-1w", "Parastream, 1 worker", (sys.executable, "-m", "app.cli", "serve"),
                      {"PARASTREAM_WORKERS": "1", "PARASTREAM_SESSION_IDLE_TIMEOUT_S": "600"})
    started = time.monotonic()
    with RunningSystem(spec, model_dir) as system:
        seen = asyncio.run(_measure(system.base_url, args.minutes))
    marks = sorted({m for m in MARKS if m <= args.minutes} | {args.minutes})
    rows = [r for r in (_window(seen, m) for m in marks) if r]
    result = {"model": Path(model_dir).name, "minutes": args.minutes, "label": args.label,
              "wall_seconds": round(time.monotonic() - started, 1), "rows": rows, "trend": _trend(seen, args.minutes)}
    name = args.name or f"long-session-{Path(model_dir).name.removesuffix('-seed0')}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    first, first_median = rows[0]["ms_per_stride"], rows[0]["ms_per_stride_median"]
    lines = [f"# Stride cost over a session's life: {result['model']}, {args.minutes} min of audio, 1 worker", "",
             f"{args.label}", "",
             "| minute of audio | ms per stride, end to end (mean) | vs minute 1 | median | vs minute 1 | largest partial event, bytes |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['minute']} | {r['ms_per_stride']} | {r['ms_per_stride'] / first:.2f}x | {r['ms_per_stride_median']} | "
              f"{r['ms_per_stride_median'] / first_median:.2f}x | {r['partial_event_bytes_max']} |" for r in rows]
    if trend := result["trend"]:
        lines += ["", f"Fitted over all {trend['minutes_fitted']} minutes (each minute's median stride): "
                  f"{trend['ms_at_first']} ms at minute 1, {trend['ms_at_last']} ms at minute {args.minutes}, "
                  f"growth {trend['growth']:+.1%} ± {trend['growth_95ci']:.1%} (95 %)."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
