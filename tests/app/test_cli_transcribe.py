"""`parastream transcribe` as a user runs it (a subprocess): text, JSON Lines and SRT of a file, raw PCM on stdin,
a live line on a terminal, and clear failures. Transcripts are compared with the REST ones of the same audio."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.audio import synth_sentences
from benchmarks.common import free_port
from tests.app.test_sdk import rest_events, write_wav
from tests.audio import synth_speechlike
from tests.harness import ROOT, ServiceProcess

SCRIPT = Path(sys.executable).parent / "parastream"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "app.cli"]


def transcribe(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*COMMAND, "transcribe", *args], cwd=ROOT, input=stdin, capture_output=True, timeout=120)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


def srt_cues(text: str) -> list[tuple[int, int, int, str]]:
    """(number, start_ms, end_ms, text) of each cue."""
    cues = []
    for block in text.strip().split("\n\n"):
        number, times, *lines = block.split("\n")
        start, end = (_ms(t) for t in times.split(" --> "))
        cues.append((int(number), start, end, "\n".join(lines)))
    return cues


def _ms(stamp: str) -> int:
    h, m, rest = stamp.split(":")
    s, ms = rest.split(",")
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def test_text_json_and_srt_of_a_file(service: ServiceProcess, tmp_path: Path) -> None:
    url = service.base_url
    pcm = synth_speechlike(7.0, seed=31)
    wav = str(write_wav(tmp_path / "clip.wav", pcm))
    reference = asyncio.run(rest_events(url, pcm))
    final = reference[-1].data

    text = transcribe("--url", url, wav)
    assert (text.returncode, text.stdout, text.stderr) == (0, final["text"] + "\n", "")

    lines = transcribe("--url", url, wav, "--format", "json")
    assert lines.returncode == 0, lines.stderr
    events = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [(e["event"], e["id"]) for e in events] == [(e.type, e.id) for e in reference]
    assert events[-1] == {"event": "final", "id": len(reference), **final}

    srt = transcribe("--url", url, wav, "--format", "srt")
    assert srt.returncode == 0, srt.stderr
    cues = srt_cues(srt.stdout)
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1)) and len(cues) >= 2
    assert "".join(c[3] for c in cues) == final["text"]  # online: the partials, grouped by time
    assert all(start < end <= 7000 and end - start <= 3600 for _, start, end, _ in cues)
    assert all(a[2] <= b[1] for a, b in zip(cues, cues[1:]))  # in order, never overlapping


def test_2pass_lines_and_cues_are_the_sentences(twopass_service: ServiceProcess, tmp_path: Path) -> None:
    url = twopass_service.base_url
    pcm = synth_sentences([2.0, 2.5], seed=4)
    wav = str(write_wav(tmp_path / "two.wav", pcm))
    sentences = [e.data for e in asyncio.run(rest_events(url, pcm, mode="2pass")) if e.type == "sentence"]
    assert len(sentences) >= 2

    text = transcribe("--url", url, wav, "--mode", "2pass")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [s["text"] for s in sentences]

    srt = transcribe("--url", url, wav, "--mode", "2pass", "--format", "srt")
    assert srt.returncode == 0, srt.stderr
    assert srt_cues(srt.stdout) == [(i + 1, s["start_ms"], s["end_ms"], s["text"]) for i, s in enumerate(sentences)]


def test_raw_pcm_from_stdin_at_8khz(service: ServiceProcess) -> None:
    url = service.base_url
    pcm = synth_speechlike(3.0, seed=32, sample_rate=8000)
    final = asyncio.run(rest_events(url, pcm, sample_rate=8000))[-1].data
    result = transcribe("--url", url, "-", "--sample-rate", "8000", stdin=pcm.astype("<i2").tobytes())
    assert (result.returncode, result.stdout, result.stderr) == (0, final["text"] + "\n", "")


def test_failures_exit_non_zero_with_a_clear_message(service: ServiceProcess, tmp_path: Path) -> None:
    url = service.base_url
    wav = str(write_wav(tmp_path / "clip.wav", synth_speechlike(1.0, seed=33)))

    down = transcribe("--url", f"http://127.0.0.1:{free_port()}", "--retries", "0", wav)
    assert down.returncode == 1 and "cannot reach the service" in down.stderr and "Traceback" not in down.stderr
    refused = transcribe("--url", url, "--mode", "2pass", wav)  # this service has no sentence models
    assert refused.returncode == 1 and "422 invalid_options" in refused.stderr and refused.stdout == ""
    missing = transcribe("--url", url, str(tmp_path / "none.wav"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    rate = transcribe("--url", url, "-", "--sample-rate", "11025", stdin=b"")
    assert rate.returncode == 2 and "--sample-rate" in rate.stderr


def test_a_terminal_gets_a_live_line_rewritten_in_place(service: ServiceProcess, tmp_path: Path) -> None:
    url = service.base_url
    pcm = synth_speechlike(3.0, seed=34)
    wav = str(write_wav(tmp_path / "clip.wav", pcm))
    final = asyncio.run(rest_events(url, pcm))[-1].data
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [*COMMAND, "transcribe", "--url", url, wav], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=child, stderr=child
    )
    os.close(child)
    out = b""
    while True:
        try:
            data = os.read(parent, 4096)
        except OSError:  # EIO: the child side closed
            break
        if not data:
            break
        out += data
    os.close(parent)
    assert proc.wait(30) == 0, out
    screen = out.decode("utf-8")
    assert "\x1b[2K" in screen  # rich erased the live line to rewrite it
    assert re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen).replace("\r", "").strip().endswith(final["text"])


def test_the_client_side_loads_no_engine() -> None:
    """The client side imports neither the engine nor torch: `transcribe` starts fast on any machine."""
    code = "import sys, app.transcribe; print(sorted(m for m in ('torch', 'funasr', 'engine', 'fastapi') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
