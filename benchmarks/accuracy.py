"""Held-out CER of a trained model, overall and by synthesis condition, through FunASR's own streaming loop.

    python -m benchmarks.accuracy models/digits     # writes benchmarks/results/accuracy-digits.{md,json}

The clips are the model's `eval.jsonl` (drawn independently of its training clips, over the same range),
synthesised again with espeak-ng. The served CER is the same number: the service's transcripts equal FunASR's loop
token for token (tests/app/test_accuracy.py streams the same clips through the REST API).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from engine.training import synth
from engine.training.cer import cer, edit_distance

RESULTS = Path(__file__).resolve().parent / "results"

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


def main(argv: list[str] | None = None) -> int:
    from engine.training.train import streaming_cer

    model_dir = Path((argv or sys.argv[1:] or ["models/digits"])[0])
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
