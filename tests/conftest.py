"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.common import MODEL_CACHE

# Built models are cached across test runs (the tiny one takes a few seconds to build, mostly importing
# funasr), where the benchmarks keep theirs; point PARASTREAM_TEST_CACHE elsewhere to use a scratch cache.
CACHE = Path(os.environ.get("PARASTREAM_TEST_CACHE", MODEL_CACHE))


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A deterministic random-weight tiny streaming Paraformer (seed 0), built on first use."""
    from engine.model.factory import ensure_model

    return ensure_model("tiny-random", CACHE)


@pytest.fixture(scope="session")
def vad_model() -> Path:
    """FSMN-VAD (FunASR's fsmn-vad architecture) with chosen weights that follow the pauses in speech-like audio."""
    from engine.model.factory import ensure_model

    return ensure_model("vad", CACHE)


@pytest.fixture(scope="session")
def offline_tiny_model() -> Path:
    """A deterministic random-weight tiny SeACo-Paraformer (the 2pass offline model; timestamps, hotwords), seed 0."""
    from engine.model.factory import ensure_model

    return ensure_model("offline-tiny-random", CACHE)


@pytest.fixture(scope="session")
def punc_tiny_model() -> Path:
    """A deterministic random-weight tiny CTTransformerStreaming punctuation model (vad_realtime variant), seed 0."""
    from engine.model.factory import ensure_model

    return ensure_model("punc-tiny-random", CACHE)


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir: Path) -> Path:
    """The model the end-to-end exactness tests serve: tiny-random, or PARASTREAM_TEST_MODEL=large-random for the
    one-off run with the real architecture's size (recorded in docs/, too slow for every CI run)."""
    from engine.model.factory import ensure_model

    kind = os.environ.get("PARASTREAM_TEST_MODEL", "tiny-random")
    return tiny_model_dir if kind == "tiny-random" else ensure_model(kind, CACHE)


@pytest.fixture(scope="session", autouse=True)
def no_segments_left_behind():
    """After the whole suite, no Parastream shared-memory segment created during it may remain in /dev/shm."""
    from engine.ring import list_segments

    before = set(list_segments())
    yield
    left = sorted(set(list_segments()) - before)
    assert not left, f"shared-memory segments left behind by the suite: {left}"
