"""Held-out CER of a trained model, overall and by synthesis condition, through FunASR's own streaming loop; and
through the service, per precision and look-back.

    python -m benchmarks.accuracy models/digits          # writes benchmarks/results/accuracy-digits.{md,json}
    python -m benchmarks.accuracy models/digits --served # writes benchmarks/results/accuracy-digits-served.{md,json}

The clips are the model's `eval.jsonl` (drawn independently of its training clips, over the same range),
synthesised again with espeak-ng. At fp32 the served CER is the loop's number: the service's transcripts equal
FunASR's loop token for token (tests/app/test_accuracy.py streams the same clips through the REST API). `--served`
streams them through a 2-worker service at each `PARASTREAM_PRECISION`, each with look-back 4/1 (FunASR's documented
recipe) and 0/0 (what the exported ONNX graphs of FunASR's C++ runtime and sherpa-onnx compute).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS
from engine.training import synth
from engine.training.cer import cer, edit_distance

CONDITIONS: list[tuple[str, Callable[[synth.ClipSpec], bool]]] = [
    ("all", lambda s: True),
    ("white noise, 5-20 dB SNR", lambda s: s.snr_db is not None and s.snr_db < 20),
    ("white noise, 20-40 dB SNR", lambda s: s.snr_db is not None and s.snr_db >= 20),
    ("no noise, exact-zero silence", lambda s: s.zero_silence),
    ("no noise, faint floor", lambda s: s.snr_db is None and not s.zero_silence),
    ("speed 120-159 wpm", lambda s: s.speed < 160),
    ("speed 160-199 wpm", lambda s: 160 <= s.speed < 200),
    ("speed 200-230 wpm", lambda s: s.speed >= 200),
    ("gain -20 to -10 dB", lambda s: s.gain_db < -10),
    ("gain -10 to +6 dB", lambda s: s.gain_db >= -10),
    ("1-4 digits", lambda s: len(s.text) <= 4),
    ("9-12 digits", lambda s: len(s.text) >= 9),
    ("variants RicishayMax*", lambda s: s.variant.startswith("RicishayMax")),
]


LOOK_BACKS = ((4, 1), (0, 0))  # (encoder, decoder) chunk look-back


async def transcribe_all(
    base_url: str, clips: Sequence[np.ndarray], options: dict[str, Any] | None = None, concurrency: int = 8
) -> list[str]:
    """Each 16 kHz int16 clip's final text through the REST API: `concurrency` sessions at once, 1 s appends as fast
    as the service takes them."""
    from app.client import ParastreamClient

    limit = asyncio.Semaphore(concurrency)

    async def final_text(client: ParastreamClient, session_id: str) -> str:
        last = None
        async for event in client.events(session_id):
            last = event
        if last is None or last.type != "final":
            raise RuntimeError(f"session {session_id} ended with {last}")
        return "".join(last.data["tokens"])

    async def one(client: ParastreamClient, pcm: np.ndarray) -> str:
        async with limit:
            session = await client.create_session(**(options or {}))
            events = asyncio.create_task(final_text(client, session["id"]))
            for start in range(0, len(pcm), 16000):
                await client.append(session["id"], pcm[start : start + 16000])
            await client.close(session["id"])
            return await asyncio.wait_for(events, 120)

    async with ParastreamClient(base_url) as client:
        return list(await asyncio.gather(*(one(client, pcm) for pcm in clips)))


def served(model_dir: Path, precisions: Sequence[str] = ("fp32", "int8")) -> dict[str, Any]:
    """CER through the service for every precision x look-back, and int8's agreement with fp32 (clips whose
    transcripts are identical)."""
    from benchmarks.systems import RunningSystem, SystemSpec

    specs = synth.read_specs(model_dir / "eval.jsonl")
    clips = [synth.synthesize(s) for s in specs]
    heard: dict[tuple[str, int, int], list[str]] = {}
    for precision in precisions:
        env = {"PARASTREAM_WORKERS": "2", "PARASTREAM_MAX_SESSIONS": "64", "PARASTREAM_PRECISION": precision}
        spec = SystemSpec(f"parastream-{precision}", "", (sys.executable, "-m", "app.cli", "serve"), env)
        with RunningSystem(spec, model_dir) as system:
            for enc, dec in LOOK_BACKS:
                options = {"encoder_chunk_look_back": enc, "decoder_chunk_look_back": dec}
                heard[(precision, enc, dec)] = asyncio.run(transcribe_all(system.base_url, clips, options))
    rows = []
    for (precision, enc, dec), hyps in heard.items():
        same = heard.get(("fp32", enc, dec))
        rows.append({
            "precision": precision, "look_back": [enc, dec], "clips": len(specs),
            "cer": round(cer(zip((s.text for s in specs), hyps)), 4),
            "identical_to_fp32": None if same is None else sum(a == b for a, b in zip(hyps, same)),
        })
    return {"model": str(model_dir), "path": "REST API, 2 workers, 8 sessions at once, chunk_size [0, 10, 5]",
            "rows": rows}


def _write_served(model_dir: Path, result: dict[str, Any]) -> None:
    stem = RESULTS / f"accuracy-{model_dir.name}-served"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    lines = [f"# Held-out streaming CER of `{model_dir}` through the service, by precision and look-back", "",
             f"{result['path']}; {result['rows'][0]['clips']} held-out clips (`eval.jsonl`).", "",
             "| precision | look-back (encoder/decoder) | CER | transcripts identical to fp32's |", "|---|---|---:|---:|"]
    for r in result["rows"]:
        same = "—" if r["precision"] == "fp32" else f"{r['identical_to_fp32']} of {r['clips']}"
        lines.append(f"| {r['precision']} | {r['look_back'][0]}/{r['look_back'][1]} | {r['cer']:.2%} | {same} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    from engine.training.train import streaming_cer

    args = list(argv if argv is not None else sys.argv[1:])
    if "--served" in args:
        args.remove("--served")
        model_dir = Path((args or ["models/digits"])[0])
        _write_served(model_dir, served(model_dir))
        return 0
    model_dir = Path((args or ["models/digits"])[0])
    specs = synth.read_specs(model_dir / "eval.jsonl")
    _, hyps = streaming_cer(model_dir, [(s.text, synth.synthesize(s)) for s in specs])
    rows = []
    for name, keep in CONDITIONS:
        pairs = [(s.text, h) for s, h in zip(specs, hyps) if keep(s)]
        rows.append({"condition": name, "clips": len(pairs), "cer": round(cer(pairs), 4)})
    worst = sorted(zip(specs, hyps), key=lambda p: -edit_distance(p[0].text, p[1]))[:8]
    result = {"model": str(model_dir), "path": "FunASR's streaming loop, chunk_size [0, 10, 5], look-back 4/1", "rows": rows,
              "worst": [{"spec": s.to_json(), "heard": h} for s, h in worst]}
    stem = RESULTS / f"accuracy-{model_dir.name}"
    stem.with_suffix(".json").write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    lines = [f"# Held-out streaming CER of `{model_dir}` by condition", "", f"{result['path']}; {len(specs)} clips.", "",
             "| condition | clips | CER |", "|---|---:|---:|"]
    lines += [f"| {r['condition']} | {r['clips']} | {r['cer']:.2%} |" for r in rows]
    lines += ["", "Worst clips (variant, wpm, pitch, SNR dB, gain dB: spoken -> heard):", ""]
    lines += [f"- {s.variant or 'plain'}, {s.speed}, {s.pitch}, {s.snr_db}, {s.gain_db}: {s.text} -> {h}" for s, h in worst]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
