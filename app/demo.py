"""`parastream demo`: the service's main job, end to end, offline.

It starts the service on a free local port with the committed demo model (`models/digits`, a small streaming
Paraformer this project trained on espeak-ng's synthetic Mandarin digits; docs/demo-model.md), streams a few
committed clips through the HTTP API at real-time pace, and prints each partial as it arrives and the final
transcript beside the text that was spoken, with the character error rate.

`--say 3 1 4` (or `--say 三一四`) synthesises new digits with espeak-ng, when it is installed. `--wav` streams any
16 kHz WAV, and `--model` serves another model (a random-weight one prints gibberish: it shows the pipeline,
not accuracy). The demo model knows espeak-ng's voice and ten digits, nothing of human speech.

The output is the transcripts and a summary, nothing else: the service runs in this process and its children, so
their logs, their libraries' notices (funasr's banners, warnings) and anything else they write go to a log file
(`--log FILE`; by default a temporary one, named only when something fails). The clips stream through the SDK
(app/sdk/), as any client's would. On a terminal each clip's partials build up on one line, rewritten in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import uvicorn

from app.client import read_wav
from app.main import create_app
from app.sdk import AsyncClient, ErrorEvent, Event, FinalEvent, PartialEvent, load_audio
from engine.errors import EngineBootError
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


def wav_clip(path: Path) -> Clip:
    """Any audio file, mixed to mono and resampled to 16 kHz."""
    try:
        return Clip(path.name, load_audio(path), SAMPLE_RATE, None)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def service_output_to(log_path: Path) -> Iterator[tuple[IO[str], IO[str]]]:
    """Send everything this process and its future children write to stdout and stderr (file descriptors 1 and 2:
    logging, uvicorn, funasr's prints and tqdm bars in the model host and the workers, warnings) to `log_path`,
    and yield streams on the original stdout and stderr for the demo's own output."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    out = open(os.dup(saved[0]), "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below
    err = open(os.dup(saved[1]), "w", encoding="utf-8", buffering=1)  # noqa: SIM115
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    logging.captureWarnings(True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo's own requests: no line each
    try:
        yield out, err
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for stream in (out, err):
            with contextlib.suppress(BrokenPipeError):  # the reader went away (`| head`)
                stream.close()


class ClipView:
    """One clip's live transcript: a line per partial when piped; on a terminal one line rewritten in place."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.live = None
        self.heard = ""
        if out.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(file=out, highlight=False), transient=True, auto_refresh=False)
            self.live.start()

    def event(self, event: Event) -> None:
        stamp = f"{time.monotonic() - self.t0:6.2f}s"
        if isinstance(event, PartialEvent):
            self.heard += event.text
            if self.live is None:
                print(f"  {stamp} partial #{event.id}: +{event.text}", file=self.out, flush=True)
            else:
                from rich.text import Text

                self.live.update(Text(f"  {stamp} heard:  {self.heard}"), refresh=True)
        elif isinstance(event, ErrorEvent):
            self.stop()
            print(f"  {stamp} error   #{event.id}: {event.code}: {event.message}", file=self.out, flush=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


async def _transcribe(client: AsyncClient, clip: Clip, speed: float, out: IO[str]) -> str | None:
    view = ClipView(out)
    final: FinalEvent | None = None
    try:
        async for event in client.transcribe(clip.pcm, sample_rate=clip.sample_rate, realtime=True, speed=speed):
            view.event(event)
            if isinstance(event, FinalEvent):
                final = event
    finally:
        view.stop()
    return "".join(final.tokens) if final is not None else None


async def run_demo(
    wav: Path | None, model: str | None, speed: float = 1.0, say: str | None = None, log_path: Path | None = None
) -> int:
    try:
        clips = [said_clip(say)] if say else [wav_clip(wav)] if wav else committed_clips()
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    keep_log = log_path is not None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="parastream-demo-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    try:
        with service_output_to(log_path) as (out, err):
            status = await _serve_and_stream(clips, model, speed, out, err)
            if status != 0:
                print(f"the service's log: {log_path}", file=err)
                keep_log = True
    except BrokenPipeError:  # the reader of the output went away (`| head`): stop quietly, as `yes | head` does
        status = 141
    if not keep_log:
        log_path.unlink(missing_ok=True)
    return status


async def _serve_and_stream(clips: list[Clip], model: str | None, speed: float, out: IO[str], err: IO[str]) -> int:
    # Its own client on a private port: keys set for `parastream serve` (environment, .env) do not apply.
    settings = Settings(model=model or str(DEMO_MODEL_DIR), port=_free_port(), workers=0, api_keys="", admin_keys="")
    engine = Engine(settings)
    try:
        await engine.start()
    except EngineBootError as exc:
        print(f"demo: the service cannot start: {exc}", file=err)
        await engine.stop()
        return 1
    config = uvicorn.Config(
        create_app(settings, engine), host="127.0.0.1", port=settings.port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        if not await engine.wait_ready(120):
            print(f"demo: workers did not become ready: {engine.halt_reason}", file=err)
            return 1
        while not server.started:
            if serving.done():
                print("demo: the HTTP server did not start", file=err)
                return 1
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{settings.port}"
        print(f"serving {settings.model} on {url} with {len(engine.workers())} workers", file=out)
        if model is None:
            print("The demo model knows only espeak-ng's synthetic voice reading the digits 零-九, not human speech;", file=out)
            print("PARASTREAM_MODEL=paraformer-zh-streaming serves the real model where its hub is reachable.", file=out)
        scored: list[tuple[str, str]] = []
        failed = 0
        audio_s = 0.0
        started = time.monotonic()
        async with AsyncClient(url) as client:
            for clip in clips:
                seconds = len(clip.pcm) / clip.sample_rate
                audio_s += seconds
                print(f"\n{clip.name}: streaming {seconds:.1f} s at {speed:g}x real time", file=out, flush=True)
                heard = await _transcribe(client, clip, speed, out)
                if heard is None:
                    failed += 1
                    print("  no final transcript", file=out, flush=True)
                elif clip.spoken is None:
                    print(f"  final:  {heard}", file=out, flush=True)
                else:
                    scored.append((clip.spoken, heard))
                    errors = edit_distance(clip.spoken, heard)
                    print(f"  final:  {heard}\n  spoken: {clip.spoken}   ({errors} errors, CER {errors / len(clip.spoken):.1%})", file=out, flush=True)
        summary = f"\n{len(clips)} clips, {audio_s:.1f} s of audio in {time.monotonic() - started:.1f} s"
        if scored:
            summary += f"; CER over {len(scored)} clips: {cer(scored):.1%}"
        if failed:
            summary += f"; {failed} without a final transcript"
        print(summary, file=out, flush=True)
        return 1 if failed else 0
    finally:
        server.should_exit = True
        await serving
