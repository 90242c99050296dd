from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import CLEAN_EXIT, ServiceProcess, segments_of


@pytest.fixture(scope="session")
def service(model_dir: Path) -> Iterator[ServiceProcess]:
    """Two workers on tiny-random, 64 kB append limit (2 s of audio), SSE keep-alive pings every 0.2 s (clients must
    never see them). One for the whole run, since a boot costs ~7 s: tests that use it must not stop it or change
    its settings, and must expect sessions of other tests (open ones end within the 60 s idle timeout)."""
    with ServiceProcess(model_dir, workers=2, max_sessions=32, max_append_bytes=64_000, sse_ping_s=0.2) as svc:
        yield svc
    assert svc.proc is not None and svc.proc.returncode in CLEAN_EXIT, svc.log()
    assert "Application shutdown complete" in svc.log()
    assert segments_of(svc.pid) == []
    svc.remove_log()
