"""`parastream demo`: the service's main job, end to end, offline.

It starts the service on a free local port with the committed demo model (`models/digits`, a small streaming
Paraformer this project trained on espeak-ng's synthetic Mandarin digits; docs/demo-model.md), streams a few
committed clips through the HTTP API at real-time pace, and prints each partial as it arrives and the final
transcript beside the text that was spoken, with the character error rate.

`--say 3 1 4` (or `--say 三一四`) synthesises new digits with espeak-ng, when it is installed. `--wav` streams any
16 kHz WAV, and `--model` serves another model (a random-weight one prints gibberish: it shows the pipeline,
not accuracy). The demo model knows espeak-ng's voice and ten digits, nothing of human speech.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import uvicorn

from app.client import ParastreamClient, TranscriptEvent, read_wav, stream_pcm
from app.main import create_app
from engine.service import Engine
from engine.settings import Settings
from engine.training import synth
from engine.training.cer import cer, edit_distance
from engine.units import SAMPLE_RATE

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL_DIR = ROOT / "models" / "digits"
ARABIC = str.maketrans("0123456789", synth.DIGITS)


@dataclass(frozen=True)
class Clip:
    name: str
    pcm: np.ndarray
    sample_rate: int
    spoken: str | None  # the reference text, when known


def committed_clips(model_dir: Path = DEMO_MODEL_DIR) -> list[Clip]:
    """The demo WAVs written by the training script, `NN-<spoken digits as 0-9>.wav`."""
    clips = []
    for path in sorted((model_dir / "demo").glob("*.wav")):
        pcm, rate = read_wav(path)
        clips.append(Clip(path.name, pcm, rate, path.stem.split("-", 1)[1].translate(ARABIC)))
    return clips


def said_clip(text: str) -> Clip:
    """`text` (digits, Arabic or Chinese, spaces ignored) synthesised by espeak-ng."""
    digits = "".join(ch for ch in text.translate(ARABIC) if not ch.isspace())
    unknown = sorted(set(digits) - set(synth.DIGITS))
    if not digits or unknown:
        raise ValueError(f"--say takes digits 0-9 or {synth.DIGITS}; got {text!r}")
    if not synth.espeak_available():
        raise ValueError("--say needs espeak-ng (Debian: apt-get install espeak-ng)")
    _, pcm = synth.synthesize_text(digits)
    return Clip(f"--say {digits}", pcm, SAMPLE_RATE, digits)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _print_event(event: TranscriptEvent, t0: float) -> None:
    stamp = f"{time.monotonic() - t0:6.2f}s"
    if event.type == "partial":
        print(f"  {stamp} partial #{event.id}: +{event.data['text']}", flush=True)
    elif event.type == "error":
        print(f"  {stamp} error   #{event.id}: {event.data}", flush=True)


async def _transcribe(client: ParastreamClient, clip: Clip, speed: float) -> str | None:
    session = await client.create_session(sample_rate=clip.sample_rate)
    t0 = time.monotonic()

    async def watch() -> TranscriptEvent | None:
        last = None
        async for event in client.events(session["id"]):
            _print_event(event, t0)
            last = event
        return last

    watcher = asyncio.create_task(watch())
    await stream_pcm(client, session["id"], clip.pcm, clip.sample_rate, speed=speed)
    last = await asyncio.wait_for(watcher, 60)
    return "".join(last.data["tokens"]) if last is not None and last.type == "final" else None


async def run_demo(wav: Path | None, model: str | None, speed: float = 1.0, say: str | None = None) -> int:
    try:
        clips = [said_clip(say)] if say else [Clip(wav.name, *read_wav(wav), None)] if wav else committed_clips()
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    settings = Settings(model=model or str(DEMO_MODEL_DIR), port=_free_port(), workers=0)
    engine = Engine(settings)
    await engine.start()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=settings.port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        if not await engine.wait_ready(120):
            print(f"workers did not become ready: {engine.halt_reason}", file=sys.stderr)
            return 1
        while not server.started:
            await asyncio.sleep(0.05)
        print(f"serving {settings.model} on http://127.0.0.1:{settings.port} with {len(engine.workers())} workers")
        if model is None:
            print("The demo model knows only espeak-ng's synthetic voice reading the digits 零-九, not human speech;")
            print("PARASTREAM_MODEL=paraformer-zh-streaming serves the real model where its hub is reachable.")
        scored: list[tuple[str, str]] = []
        failed = False
        async with ParastreamClient(f"http://127.0.0.1:{settings.port}") as client:
            for clip in clips:
                seconds = len(clip.pcm) / clip.sample_rate
                print(f"\n{clip.name}: streaming {seconds:.1f} s at {speed:g}x real time", flush=True)
                heard = await _transcribe(client, clip, speed)
                if heard is None:
                    failed = True
                    print("  no final transcript", flush=True)
                elif clip.spoken is None:
                    print(f"  final:  {heard}", flush=True)
                else:
                    scored.append((clip.spoken, heard))
                    errors = edit_distance(clip.spoken, heard)
                    print(f"  final:  {heard}\n  spoken: {clip.spoken}   ({errors} errors, CER {errors / len(clip.spoken):.1%})", flush=True)
        if scored:
            print(f"\nCER over {len(scored)} clips: {cer(scored):.1%}", flush=True)
        return 1 if failed else 0
    finally:
        server.should_exit = True
        await serving
