from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import CLEAN_EXIT, ServiceProcess, segments_of


@pytest.fixture(scope="module")
def service(model_dir: Path) -> Iterator[ServiceProcess]:
    """Two workers on tiny-random, 64 kB append limit (2 s of audio)."""
    with ServiceProcess(model_dir, workers=2, max_sessions=32, max_append_bytes=64_000) as svc:
        yield svc
    assert svc.proc is not None and svc.proc.returncode in CLEAN_EXIT, svc.log()
    assert "Application shutdown complete" in svc.log()
    assert segments_of(svc.pid) == []
    svc.remove_log()
