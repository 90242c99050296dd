"""The long-session benchmark in miniature: it runs end to end and reports a cost per stride per minute mark."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import long_session


def test_two_minutes_report_each_minute(tmp_path: Path) -> None:
    assert long_session.main(["--minutes", "2", "--name", str(tmp_path / "ls")]) == 0
    result = json.loads((tmp_path / "ls.json").read_text())
    assert [row["minute"] for row in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["ms_per_stride"] > 0 and 90 <= row["strides"] <= 100  # a minute is 100 strides of 600 ms
    assert (tmp_path / "ls.md").read_text().count("\n| ") == 3  # header and two rows
