"""`parastream transcribe FILE|-`: stream a file or raw PCM from stdin to a running service, print the transcript.

    parastream transcribe speech.wav                       # the transcript, as it is spoken on a terminal
    parastream transcribe speech.wav --format json | jq .  # one JSON object per event (JSON Lines)
    parastream transcribe speech.wav --format srt > speech.srt
    arecord -q -f S16_LE -r 16000 -c 1 -t raw | parastream transcribe - --mode 2pass

Formats (docs/sdk.md):
- `text`: the transcript as plain lines: in 2pass and offline modes one line per sentence as each is decoded, in
  online mode the final text. On a terminal the partials of the speech not yet in a line are shown on a live line
  below, rewritten in place (rich) and gone at the end, so what stays on screen is what a pipe gets.
- `json`: one JSON object per event, `{"event": "partial", "id": 1, ...the event's fields}` (JSON Lines), flushed
  as each event arrives.
- `srt`: subtitles, a cue per sentence (2pass, offline: the VAD's start_ms/end_ms), or in online mode the partials
  grouped into cues of about 3 s of audio by their `samples_processed`.

`-` reads raw 16-bit little-endian mono PCM at `--sample-rate` (16000 by default) from stdin until end of input; a
file (anything libsndfile reads) is mixed to mono and resampled to that rate. Ctrl-C ends the audio there, and the
transcript of what was sent is printed; a second Ctrl-C quits at once.

Exit status: 0 when the final transcript arrived; 1 when the service could not be reached, refused a request
(4xx/5xx, with its error code) or ended the session with an error event; 2 for bad arguments or an unreadable file;
130 when interrupted twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Protocol

from app.sdk import (
    DEFAULT_URL,
    SAMPLE_RATES,
    APIError,
    AsyncClient,
    ConnectionFailed,
    ErrorEvent,
    Event,
    FinalEvent,
    GapEvent,
    PartialEvent,
    SentenceEvent,
    Session,
    event_to_dict,
)
from app.sdk.audio import open_source

FORMATS = ("text", "json", "srt")
MODES = ("online", "2pass", "offline")
STDIN_FRAME_MS = 100
SRT_CUE_MS = 3000  # online mode: a cue closes once it spans this much audio


def configure(parser: argparse.ArgumentParser) -> None:
    """The `transcribe` subcommand's arguments."""
    parser.add_argument("source", metavar="FILE|-", help="an audio file, or - for raw PCM16 LE mono on stdin")
    parser.add_argument(
        "--url",
        default=os.environ.get("PARASTREAM_URL", DEFAULT_URL),
        help=f"the service (default: $PARASTREAM_URL or {DEFAULT_URL})",
    )
    parser.add_argument("--format", choices=FORMATS, default="text", help="text (default), json (JSON Lines) or srt")
    parser.add_argument("--mode", choices=MODES, help="online, 2pass or offline (default: the service's)")
    parser.add_argument("--hotwords", help="space-separated words to bias the offline model toward (2pass, offline)")
    parser.add_argument("--realtime", action="store_true", help="send at real-time pace (default: as fast as taken)")
    parser.add_argument(
        "--sample-rate",
        type=int,
        choices=SAMPLE_RATES,
        default=16_000,
        help="the session's rate: of the PCM on stdin, or the rate a file is resampled to (default 16000)",
    )
    parser.add_argument("--retries", type=int, default=5, help="tries after a dropped connection (default 5)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("PARASTREAM_API_KEY"),
        help="the key of a service that needs one (default: $PARASTREAM_API_KEY, the better place: a command line is "
        "visible to other users)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        print("parastream transcribe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as `yes | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


async def _main(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    def fail(status: int, message: str) -> int:
        print(f"parastream transcribe: {message}", file=err, flush=True)
        return status

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:  # the first Ctrl-C ends the audio; the next one is a KeyboardInterrupt
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on the main thread / not on this platform
        loop.add_signal_handler(signal.SIGINT, interrupted)
    if args.source != "-" and not Path(args.source).is_file():
        return fail(2, f"no such file: {args.source}")
    try:
        frames = _stdin_frames(args.sample_rate) if args.source == "-" else open_source(args.source, args.sample_rate)
    except (OSError, RuntimeError, ValueError) as exc:
        return fail(2, f"cannot read {args.source}: {exc}")
    renderer: Renderer | None = None
    session: Session | None = None
    last: Event | None = None
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    async with AsyncClient(args.url, max_retries=args.retries, headers=headers) as client:
        try:
            session = await client.create_session(sample_rate=args.sample_rate, mode=args.mode, hotwords=args.hotwords)
            renderer = make_renderer(args.format, out, session)
            async for event in client.stream(session, _until(frames, stop), realtime=args.realtime):
                renderer.event(event)
                last = event
        except ConnectionFailed as exc:
            return fail(1, f"cannot reach the service at {args.url}: {exc}")
        except APIError as exc:
            return fail(1, f"the service refused: {exc.status} {exc.code}: {exc.message}")
        finally:
            if renderer is not None:
                renderer.close()
            if session is not None and not isinstance(last, (FinalEvent, ErrorEvent)):  # stopped early
                with contextlib.suppress(Exception):
                    await client.delete(session.id)
    if isinstance(last, ErrorEvent):
        return fail(1, f"the session ended with an error: {last.code}: {last.message}")
    if not isinstance(last, FinalEvent):
        return fail(1, "the event stream ended without a final transcript")
    return 0


async def _until(frames: AsyncIterator[bytes], stop: asyncio.Event) -> AsyncIterator[bytes]:
    """`frames` until `stop` is set (then the audio ends there: the session is closed and transcribed)."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            step = asyncio.ensure_future(anext(frames))
            await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                return
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        stopped.cancel()


async def _stdin_frames(sample_rate: int) -> AsyncIterator[bytes]:
    """Raw PCM from stdin in frames of up to 100 ms, read by a daemon thread (a blocked read never holds up the
    exit)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    size = sample_rate * STDIN_FRAME_MS // 1000 * 2
    fd = sys.stdin.fileno()

    def read() -> None:  # os.read, not sys.stdin.buffer: a read blocked at exit must hold no lock of the interpreter's
        try:
            while chunk := os.read(fd, size):
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="stdin-pcm", daemon=True).start()
    carry = b""
    while (chunk := await queue.get()) is not None:
        data = carry + chunk
        cut = len(data) - len(data) % 2
        carry = data[cut:]
        if cut:
            yield data[:cut]


# ---------------------------------------------------------------------------------------------- output


class Renderer(Protocol):
    def event(self, event: Event) -> None: ...

    def close(self) -> None: ...


def make_renderer(fmt: str, out: IO[str], session: Session) -> Renderer:
    if fmt == "json":
        return JsonLines(out)
    if fmt == "srt":
        return Srt(out, session)
    return LiveText(out) if out.isatty() else PlainText(out)


class JsonLines:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def event(self, event: Event) -> None:
        self.out.write(json.dumps(event_to_dict(event), ensure_ascii=False) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class PlainText:
    """A line per sentence as it comes; the final text at the end when no sentence was printed (online mode)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.sentences = 0

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def event(self, event: Event) -> None:
        if isinstance(event, SentenceEvent):
            self.sentences += 1
            self.line(event.text)
        elif isinstance(event, FinalEvent) and not self.sentences and event.text:
            self.line(event.text)
        elif isinstance(event, GapEvent):
            print(f"parastream transcribe: {event.missed} events were lost", file=sys.stderr)

    def close(self) -> None:
        pass


class LiveText(PlainText):
    """PlainText's lines, plus a live line below them (rich) with the partials since the last sentence: rewritten
    in place, showing its tail when it is wider than the terminal, and removed at the end."""

    def __init__(self, out: IO[str]) -> None:
        super().__init__(out)
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self.live = Live(console=self.console, transient=True, auto_refresh=False, redirect_stdout=False)
        self.live.start()
        self.partial = ""

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)

    def event(self, event: Event) -> None:
        if isinstance(event, PartialEvent):
            self.partial += event.text
        elif isinstance(event, SentenceEvent):
            self.partial = ""  # the sentence replaces the partials of its stretch of audio
        super().event(event)
        self._show()

    def _show(self) -> None:
        from rich.text import Text

        self.live.update(Text(tail(self.partial, self.console.width - 1), style="dim"), refresh=True)

    def close(self) -> None:
        self.live.stop()


def tail(text: str, cells: int) -> str:
    """The end of `text` that fits in `cells` terminal cells (wide CJK characters take two), with a leading '…'."""
    from rich.cells import cell_len

    if cell_len(text) <= cells:
        return text
    kept: list[str] = []
    used = 1
    for ch in reversed(text):
        used += cell_len(ch)
        if used > cells:
            break
        kept.append(ch)
    return "…" + "".join(reversed(kept))


class Srt:
    """SubRip cues: one per sentence; in online mode, partials grouped into cues of about SRT_CUE_MS."""

    def __init__(self, out: IO[str], session: Session) -> None:
        self.out = out
        self.session = session
        self.sentences = session.mode != "online"
        self.cues = 0
        self.start_ms: int | None = None  # the open online cue
        self.end_ms = 0
        self.text = ""
        self.last_end_ms = 0

    def cue(self, start_ms: int, end_ms: int, text: str) -> None:
        self.cues += 1
        self.out.write(f"{self.cues}\n{srt_time(start_ms)} --> {srt_time(max(end_ms, start_ms))}\n{text}\n\n")
        self.out.flush()

    def event(self, event: Event) -> None:
        if isinstance(event, SentenceEvent):
            self.sentences = True
            if event.text:
                self.cue(event.start_ms, event.end_ms, event.text)
        elif isinstance(event, PartialEvent) and not self.sentences:
            end_ms = event.samples_processed * 1000 // self.session.sample_rate
            if self.start_ms is None:
                self.start_ms = max(self.last_end_ms, end_ms - self.session.stride_ms)
            self.text += event.text
            self.end_ms = end_ms
            if self.end_ms - self.start_ms >= SRT_CUE_MS:
                self._flush()
        elif isinstance(event, (FinalEvent, ErrorEvent)):
            self._flush()

    def _flush(self) -> None:
        if self.start_ms is not None and self.text:
            self.cue(self.start_ms, self.end_ms, self.text)
            self.last_end_ms = self.end_ms
        self.start_ms, self.text = None, ""

    def close(self) -> None:
        self._flush()


def srt_time(ms: int) -> str:
    """`HH:MM:SS,mmm`."""
    seconds, milli = divmod(max(0, ms), 1000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours:02d}:{minute:02d}:{sec:02d},{milli:03d}"
