from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import CLEAN_EXIT, ROOT, ServiceProcess, segments_of

# PARASTREAM_TEST_MODEL=large-random runs the 2pass tests on the real architectures (docs/pipeline.md).
LARGE = os.environ.get("PARASTREAM_TEST_MODEL", "tiny-random") == "large-random"
# The 2pass service's PARASTREAM_MAX_SENTENCE_S, short so that the test clips' longer sentences also meet the cut
# (and the references are FunASR's VAD with the same max_single_segment_time).
MAX_SENTENCE_S = 3
DIGITS_MODEL = ROOT / "models" / "digits"


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


@pytest.fixture(scope="session")
def twopass_models(model_dir: Path, vad_model: Path, offline_tiny_model: Path, punc_tiny_model: Path) -> dict[str, Path]:
    """The streaming, VAD, offline and punctuation models of the 2pass service (tiny random, or large with LARGE)."""
    if not LARGE:
        return {"model": model_dir, "vad": vad_model, "offline": offline_tiny_model, "punc": punc_tiny_model}
    from engine.model.factory import ensure_model
    from tests.conftest import CACHE

    return {
        "model": model_dir,
        "vad": vad_model,
        "offline": ensure_model("offline-large-random", CACHE),
        "punc": ensure_model("punc-large-random", CACHE),
    }


@pytest.fixture(scope="session")
def twopass_service(twopass_models: dict[str, Path]) -> Iterator[ServiceProcess]:
    """Two workers with the 2pass models (VAD, offline, punctuation), MAX_SENTENCE_S sentences. Shared like
    `service`: some tests kill its workers (sessions are restored), so expect restarts and other tests' sessions."""
    settings = dict(
        workers=2,
        vad_model=twopass_models["vad"],
        offline_model=twopass_models["offline"],
        punc_model=twopass_models["punc"],
        worker_ping_interval_s=0.2,
        max_append_bytes=64_000,
        max_sentence_s=MAX_SENTENCE_S,
    )
    with ServiceProcess(twopass_models["model"], **settings) as svc:
        yield svc
    assert svc.proc is not None and svc.proc.returncode in CLEAN_EXIT, svc.log()
    assert segments_of(svc.pid) == []
    svc.remove_log()


@pytest.fixture(scope="session")
def digits_service() -> Iterator[ServiceProcess]:
    """The committed demo model trained on synthetic digits (models/digits), for tests that check words."""
    with ServiceProcess(DIGITS_MODEL, workers=2, max_sessions=32) as svc:
        yield svc
    assert svc.proc is not None and svc.proc.returncode in CLEAN_EXIT, svc.log()
    svc.remove_log()
