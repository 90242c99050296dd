"""The 2pass benchmark still works end to end (quick mode, tiny models), and FunASR's 2pass server design served by
the baseline sends the same sentences as Parastream. Timings are never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.twopass import main as twopass_main


@pytest.mark.bench_smoke
def test_quick_2pass_benchmark_runs_both_systems_and_they_agree(
    tiny_model_dir: Path, vad_model: Path, offline_tiny_model: Path, punc_tiny_model: Path, tmp_path: Path
) -> None:
    assert twopass_main(["--size", "tiny", "--quick", "--out", str(tmp_path), "--name", "smoke2"]) == 0
    result = json.loads((tmp_path / "smoke2.json").read_text())
    assert (tmp_path / "smoke2.md").read_text().startswith("# Benchmark")
    assert (tmp_path / "smoke2.png").stat().st_size > 0
    assert "random weights" in result["note"]
    systems = {s["name"]: s for s in result["systems"]}
    assert set(systems) == {"parastream-2pass", "funasr-2pass-threads"}
    for name, system in systems.items():
        (trial,) = system["trials"]
        assert trial["streams"] == 2 and trial["errors"] == 0 and trial["finals"] == 2, (name, trial)
        assert trial["partial_ms"]["count"] > 0, name
        # Each clip's sentences end with a pause: every one is found by the VAD and timed, none cut by the close.
        assert trial["sentence_ms"]["count"] >= 2 and trial["sentences_at_close"] == 0, (name, trial)
        assert trial["sentence_from_vad_end_ms"]["count"] == trial["sentence_ms"]["count"]
    # The same clips give the same sentences (text and bounds) from both servers: the baseline runs FunASR's loop.
    rows = {name: {r["clip"]: r for r in s["trials"][0]["texts"]} for name, s in systems.items()}
    ours, theirs = rows["parastream-2pass"], rows["funasr-2pass-threads"]
    assert set(ours) == set(theirs) == {0, 1}
    for clip in ours:
        assert ours[clip]["sentences"] and ours[clip]["sentences"] == theirs[clip]["sentences"], clip
        assert ours[clip]["bounds"] == theirs[clip]["bounds"], clip
    agreement = result["agreement"]
    assert agreement["clips_with_equal_sentences"] == agreement["clips_compared"] == 2
    # The interleaving run: online sessions alone, then beside a 2pass session, on the Parastream service.
    phases = result["interleave"]["phases"]
    assert phases["alone"]["online_partial_ms"]["count"] > 0
    beside = phases["beside_2pass"]
    assert beside["errors"] == 0 and beside["two_pass_sentence_ms"]["count"] >= 1
    assert beside["server"]["sentences"] >= 1
