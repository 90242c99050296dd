"""Writes a benchmark run as JSON, a Markdown table and a PNG plot, with the conditions it ran under."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import git_commit, machine, now_utc, package_versions

PACKAGES = ("torch", "funasr", "fastapi", "uvicorn", "sse-starlette", "httpx")
HONESTY = (
    "The models have random weights (built from FunASR's real streaming Paraformer architecture): these figures "
    "measure serving cost, not recognition accuracy, and the transcripts are gibberish. 'Wrong transcripts' compares "
    "each served transcript with FunASR's own single-process loop on the same audio, token for token."
)


def versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **package_versions(PACKAGES)}


def write(
    result: dict[str, Any],
    out_dir: Path,
    name: str,
    render: Callable[[dict[str, Any]], str] | None = None,
    draw: Callable[[dict[str, Any], Path], None] | None = None,
    note: str = HONESTY,
) -> list[Path]:
    """`name`.json, .md and .png in `out_dir`, with the run's conditions; `render`/`draw`/`note` (default: this
    module's markdown, plot and honesty note) make those of another benchmark's result."""
    result = {
        "name": name,
        "date": now_utc(),
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "note": note,
        **result,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md", out_dir / f"{name}.png"]
    paths[0].write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    paths[1].write_text((render or markdown)(result))
    (draw or plot)(result, paths[2])
    return paths


def _fmt(value: Any) -> str:
    return "–" if value is None else str(value)


def markdown(r: dict[str, Any]) -> str:
    m, v, c = r["machine"], r["versions"], r["config"]
    limit = c["latency_limit_ms"]
    lines = [
        f"# Benchmark `{r['name']}`",
        "",
        f"- Model: `{Path(c['model_dir']).name}`; {c['distinct_clips']} distinct synthetic speech-like clips of "
        f"{c['clip_seconds']} s, streamed at real time in {c['frame_ms']} ms frames, clients staggered over one stride.",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB. The load generator runs on the same cores.",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + f". Commit `{r['commit']}`, {r['date']}.",
        "",
        f"> {r['note']}",
        "",
        f"## Capacity: concurrent real-time streams with p95 partial latency ≤ {limit:g} ms, all keeping up, "
        "all sent in real time",
        "",
        "| system | capacity | wrong transcripts (all trials) | streams in trials |",
        "|---|---:|---:|---:|",
    ]
    for s in r["systems"]:
        wrong = sum(t["wrong_transcripts"] for t in s["trials"])
        total = sum(t["finals"] for t in s["trials"])
        lines.append(f"| {s['description']} (`{s['name']}`) | **{s['capacity_streams']}** | {wrong} of {total} | "
                     f"{', '.join(str(t['streams']) for t in s['trials'])} |")
    lines += [
        "",
        "## Light load: one stream",
        "",
        "Partial latency of a lone real-time stream, pooled over the one-stream trials of each system.",
        "",
        "| system | partials | p50 ms | p95 ms |",
        "|---|---:|---:|---:|",
    ]
    for s in r["systems"]:
        light = s.get("light_load_partial_ms") or {}
        lines.append(f"| `{s['name']}` | {_fmt(light.get('count'))} | {_fmt(light.get('p50'))} | {_fmt(light.get('p95'))} |")
    b = r.get("bound") or {}
    if b:
        lines += ["", "## In-process bound (no serving at all)", "", "```", json.dumps(_bound_brief(b), indent=2), "```"]
    lines += [
        "",
        "## Every trial",
        "",
        "Server columns (Parastream only, from its `/metrics` over the trial): the mean batch size a stride saw, and the "
        "mean wall time of the forward pass it shared. Load-gen CPU: seconds of CPU the load generator itself used "
        "during the trial (it shares the cores with the system under test).",
        "",
        "| system | N | partial p50 / p95 / p99 ms | final p50 / p95 ms | append p50 / p95 ms | max behind (strides) | "
        "max send lag ms | errors | wrong | CPU % (all procs) | PSS MB (all procs) | batch mean | forward ms | "
        "load-gen CPU s | pass |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|",
    ]
    for s in r["systems"]:
        for t in s["trials"]:
            p, f, a = t["partial_ms"], t["final_ms"], t["append_ms"]
            res = t.get("resources", {})
            server = t.get("server") or {}
            lines.append(
                f"| `{s['name']}` | {t['streams']} | {_fmt(p['p50'])} / {_fmt(p['p95'])} / {_fmt(p['p99'])} | "
                f"{_fmt(f['p50'])} / {_fmt(f['p95'])} | {_fmt(a['p50'])} / {_fmt(a['p95'])} | {t['max_behind_strides']} | "
                f"{t['max_send_lag_ms']} | {t['errors']} | {t['wrong_transcripts']} | "
                f"{_fmt(res.get('cpu_percent_total_mean'))} | {_fmt(res.get('pss_mb_total_max'))} | "
                f"{_fmt(server.get('batch_size_mean'))} | {_fmt(server.get('forward_ms_mean'))} | "
                f"{_fmt(t.get('loadgen_cpu_s'))} | {'✓' if t['passed'] else '✗'} |"
            )
    lines.append("")
    return "\n".join(lines)


def _bound_brief(bound: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of the in-process bound, without the raw samples."""
    return {k: v for k, v in bound.items() if not isinstance(v, list)}


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for s in r["systems"]:
        points = [(t["streams"], t["partial_ms"]["p95"]) for t in s["trials"] if t["partial_ms"]["p95"] is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=f"{s['description']} (capacity {s['capacity_streams']})")
    ax.axhline(r["config"]["latency_limit_ms"], color="grey", linestyle="--", label="latency limit")
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("p95 partial latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{Path(r['config']['model_dir']).name} on {r['machine']['cores']} cores (random weights: cost only)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
