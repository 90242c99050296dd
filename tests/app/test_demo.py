"""`parastream demo` (what `make demo` runs) serves the trained model and prints a correct transcript, and nothing
but the transcripts and a summary: no request log lines, no library banners, warnings or progress bars."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT

# Every line the demo prints, piped; anything else (a log line, a banner, a warning, a traceback) is noise.
DEMO_LINES = [
    r"serving \S+ on http://127\.0\.0\.1:\d+ with \d+ workers",
    r"The demo model knows only espeak-ng's synthetic voice reading the digits 零-九, not human speech;",
    r"PARASTREAM_MODEL=paraformer-zh-streaming serves the real model where its hub is reachable\.",
    r"",
    r"\S.*: streaming \d+\.\d s at [\d.]+x real time",
    r" +\d+\.\d\ds partial #\d+: \+\S*",
    r"  final:  \S*",
    r"  spoken: \S+   \(\d+ errors, CER \d+\.\d%\)",
    r"\d+ clips, \d+\.\d s of audio in \d+\.\d s(; CER over \d+ clips: \d+\.\d%)?",
]


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    # --speed 20: the same stream at 20x real time, so the test takes seconds, not the demo's real-time pace.
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--speed", "20", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    assert result.stderr == "", result.stderr
    noise = [line for line in result.stdout.splitlines() if not any(re.fullmatch(p, line) for p in DEMO_LINES)]
    assert noise == [], result.stdout


def test_demo_transcribes_the_committed_clips_correctly() -> None:
    result = _demo()
    assert result.returncode == 0, result.stdout + result.stderr
    finals = re.findall(r"final:  (\S+)\n  spoken: (\S+)", result.stdout)
    assert len(finals) == 3, result.stdout
    assert all(heard == spoken for heard, spoken in finals), result.stdout
    assert "partial #1" in result.stdout and "CER over 3 clips: 0.0%" in result.stdout
    assert_clean(result)


def test_demo_says_new_digits_with_espeak_and_logs_the_service_to_a_file(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    result = _demo("--say", "8 0 5 2", "--log", str(log))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "spoken: 八零五二" in result.stdout
    assert_clean(result)
    # What the demo keeps off the screen went to the log: the service's own lines and funasr's banner.
    text = log.read_text()
    assert "engine.supervisor INFO worker 0 ready" in text and "funasr version" in text
    assert "HTTP Request:" not in text  # the demo's own requests are not logged at all


def test_demo_refuses_text_it_cannot_say() -> None:
    result = _demo("--say", "hello")
    assert result.returncode == 2 and "--say takes digits" in result.stderr
