"""`parastream demo`: the service's main job, end to end, offline.

It builds the tiny-random model (unless given one), starts the service on a free local port, streams a WAV through
the HTTP API at real-time pace and prints each SSE event as it arrives. With random weights the text is gibberish:
the demo shows the pipeline working, not recognition accuracy.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import uvicorn

from app.client import ParastreamClient, TranscriptEvent, read_wav, stream_pcm
from app.main import create_app
from engine.service import Engine
from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WAV = ROOT / "benchmarks" / "audio" / "sample-zh.wav"
DEMO_MODEL_DIR = ROOT / ".cache" / "models" / "tiny-random-seed0"


def _ensure_tiny_model() -> str:
    if not (DEMO_MODEL_DIR / "model.pt").exists():
        # A subprocess, so that this (API) process never imports torch or funasr.
        subprocess.run(
            [sys.executable, "-m", "app.cli", "make-model", "tiny-random", str(DEMO_MODEL_DIR)], check=True
        )
    return str(DEMO_MODEL_DIR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _print_event(event: TranscriptEvent, t0: float) -> None:
    stamp = f"{time.monotonic() - t0:6.2f}s"
    if event.type == "partial":
        print(f"{stamp} partial #{event.id}: +{''.join(event.data['tokens'])}  | {event.data['text']}", flush=True)
    elif event.type == "final":
        print(f"{stamp} final   #{event.id}: {event.data['text']}  ({len(event.data['tokens'])} tokens)", flush=True)
    else:
        print(f"{stamp} error   #{event.id}: {event.data}", flush=True)


async def run_demo(wav: Path | None, model: str | None, speed: float = 1.0) -> int:
    pcm, sample_rate = read_wav(wav or DEFAULT_WAV)
    settings = Settings(model=model or _ensure_tiny_model(), port=_free_port(), workers=0)
    engine = Engine(settings)
    await engine.start()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=settings.port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        if not await engine.wait_ready(120):
            print(f"workers did not become ready: {engine.supervisor.halt_reason}", file=sys.stderr)
            return 1
        while not server.started:
            await asyncio.sleep(0.05)
        print(f"serving {settings.model} on http://127.0.0.1:{settings.port} with {len(engine.supervisor.slots)} workers")
        print("NOTE: random-weight model -> the transcript below is gibberish; it shows the pipeline, not accuracy.")
        print(f"streaming {len(pcm) / sample_rate:.1f} s of audio at {speed:g}x real time ...", flush=True)
        async with ParastreamClient(f"http://127.0.0.1:{settings.port}") as client:
            session = await client.create_session(sample_rate=sample_rate)
            t0 = time.monotonic()

            async def watch() -> TranscriptEvent | None:
                last = None
                async for event in client.events(session["id"]):
                    _print_event(event, t0)
                    last = event
                return last

            watcher = asyncio.create_task(watch())
            await stream_pcm(client, session["id"], pcm, sample_rate, speed=speed)
            last = await asyncio.wait_for(watcher, 60)
        return 0 if last is not None and last.type == "final" else 1
    finally:
        server.should_exit = True
        await serving
