"""Accuracy through the service: the committed demo model streams its held-out clips over REST within the CER bar.

The clips are the ones `python -m engine.training` drew for evaluation (`models/digits/eval.jsonl`, independent of
the training clips, over the same range of voices, speeds, pitches, gains, noise and silence), synthesised again
here with espeak-ng and streamed through the HTTP API like any client's audio.
"""

from __future__ import annotations

import asyncio
import json

from benchmarks.accuracy import transcribe_all
from engine.training import synth
from engine.training.cer import cer
from tests.app.conftest import DIGITS_MODEL
from tests.harness import ServiceProcess

CER_BAR = 0.05  # issue 9: digits, streaming, held-out synthetic speech
CONCURRENT = 8


def _held_out() -> list[synth.ClipSpec]:
    return synth.read_specs(DIGITS_MODEL / "eval.jsonl")


def test_streaming_cer_through_the_rest_api_meets_the_bar(digits_service: ServiceProcess) -> None:
    assert synth.espeak_available(), "espeak-ng is missing: `make system-deps` installs it"
    specs = _held_out()
    assert len(specs) >= 400
    heard = asyncio.run(transcribe_all(digits_service.base_url, [synth.synthesize(s) for s in specs], concurrency=CONCURRENT))
    served = cer((s.text, h) for s, h in zip(specs, heard))
    recorded = json.loads((DIGITS_MODEL / "training.json").read_text())["eval"]["streaming_cer_funasr_loop"]
    print(f"served streaming CER {served:.2%} over {len(specs)} held-out clips (FunASR's loop at training: {recorded:.2%})")
    assert served <= CER_BAR
