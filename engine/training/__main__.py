"""``python -m engine.training digits OUT``: synthesise the data, train, evaluate, write a committed model dir.

What lands in OUT (docs/demo-model.md explains each):

* ``config.yaml``, ``model.pt``, ``tokens.json``, ``am.mvn``: a model dir FunASR's ``AutoModel`` loads;
* ``eval.jsonl``: the held-out clips (one :class:`~engine.training.synth.ClipSpec` a line), drawn independently of
  the training clips over the same range; the CER tests synthesise them again;
* ``demo/NN-<digits>.wav``: a few clips for ``make demo`` (the spoken digits in the name), so the demo needs no
  espeak-ng;
* ``training.json``: the command's settings, the time each phase took, the loss per epoch, the streaming CER on
  the held-out clips through FunASR's own loop, and the sha256 of every file above.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
import wave
from dataclasses import asdict
from pathlib import Path

import numpy as np

from engine.training import dataset, synth
from engine.units import SAMPLE_RATE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.training", description=__doc__.splitlines()[0])
    parser.add_argument("vocabulary", choices=["digits"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-clips", type=int, default=12000)
    parser.add_argument("--eval-clips", type=int, default=400)
    parser.add_argument("--demo-clips", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(".cache/training"))
    args = parser.parse_args(argv)

    from engine.training.train import TrainConfig, save_json, streaming_cer, train

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {
        "command": "python -m engine.training " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "espeak_voice_variants": len(synth.voice_variants()),
    }
    t0 = time.monotonic()
    clips = dataset.build(args.seed, "train", args.train_clips, args.cache, processes=args.threads)
    record["data_seconds"] = round(time.monotonic() - t0, 1)
    record["train_clips"] = len(clips)
    record["train_audio_hours"] = round(sum(len(f) for f in clips.feats) * 0.06 / 3600, 2)
    print(f"{len(clips)} training clips ({record['train_audio_hours']} h) in {record['data_seconds']} s", flush=True)

    cfg = TrainConfig(seed=args.seed, epochs=args.epochs, threads=args.threads)
    record["train_config"] = asdict(cfg)
    record.update(train(clips, out, cfg))

    specs = [synth.draw_spec(args.seed, "eval", i) for i in range(args.eval_clips)]
    synth.write_specs(out / "eval.jsonl", specs)
    t0 = time.monotonic()
    cer, hyps = streaming_cer(out, [(s.text, synth.synthesize(s)) for s in specs], threads=args.threads)
    record["eval"] = {
        "clips": len(specs),
        "chars": sum(len(s.text) for s in specs),
        "streaming_cer_funasr_loop": round(cer, 4),
        "exact_clips": sum(h == s.text for s, h in zip(specs, hyps)),
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(f"held-out streaming CER (FunASR's loop): {cer:.2%}", flush=True)

    demo = out / "demo"
    demo.mkdir(exist_ok=True)
    for i in range(args.demo_clips):
        spec, pcm = synth.synthesize_text(synth.draw_spec(args.seed, "demo", i).text, seed=i)
        # The spoken digits in the name, as Arabic numerals: an ASCII name travels through every tool.
        _write_wav(demo / f"{i:02d}-{''.join(str(synth.DIGITS.index(ch)) for ch in spec.text)}.wav", pcm)
    record["sha256"] = {str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file() and p.name != "training.json"}
    save_json(out / "training.json", record)
    return 0


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
