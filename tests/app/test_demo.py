"""`parastream demo` (what `make demo` runs) serves the trained model and prints a correct transcript."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.harness import ROOT


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    # --speed 20: the same stream at 20x real time, so the test takes seconds, not the demo's real-time pace.
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--speed", "20", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_demo_transcribes_the_committed_clips_correctly() -> None:
    result = _demo()
    assert result.returncode == 0, result.stdout + result.stderr
    finals = re.findall(r"final:  (\S+)\n  spoken: (\S+)", result.stdout)
    assert len(finals) == 3, result.stdout
    assert all(heard == spoken for heard, spoken in finals), result.stdout
    assert "partial #1" in result.stdout and "CER over 3 clips: 0.0%" in result.stdout


def test_demo_says_new_digits_with_espeak() -> None:
    result = _demo("--say", "8 0 5 2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "spoken: 八零五二" in result.stdout


def test_demo_refuses_text_it_cannot_say() -> None:
    result = _demo("--say", "hello")
    assert result.returncode == 2 and "--say takes digits" in result.stderr
