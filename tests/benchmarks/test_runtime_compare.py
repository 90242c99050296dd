"""The runtime comparison in miniature: every candidate runs, agrees with eager where it should, and is reported."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import runtime_compare


def test_tiny_comparison_reports_every_runtime(tmp_path: Path) -> None:
    stem = tmp_path / "rt"
    assert runtime_compare.main(["--model", "tiny-random", "--batch-sizes", "1", "3", "--rounds", "2", "--name", str(stem)]) == 0
    result = json.loads(stem.with_suffix(".json").read_text())
    assert [row["batch"] for row in result["rows"]] == [1, 3]
    for row in result["rows"]:
        assert set(row["ms"]) == {"torch eager fp32", "onnxruntime fp32", "torch eager int8"}
        assert all(ms > 0 for ms in row["ms"].values())
        assert row["onnx_max_abs_diff"] < 1e-4  # the same function, up to float rounding
        assert 0 < row["int8_relative_l2"] < 0.1  # quantised, and close
    assert stem.with_suffix(".md").read_text().count("\n| ") == 3
