"""The committed trained models (the only weights in the repository) are the files their training run recorded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parent.parent / "models"
TRAINED = sorted(p.parent for p in MODELS.glob("*/training.json"))
MAX_FILE_BYTES = 6 * 1024 * 1024


def test_there_is_a_trained_model() -> None:
    assert [p.name for p in TRAINED] == ["digits"]


@pytest.mark.parametrize("model_dir", TRAINED, ids=lambda p: p.name)
def test_committed_files_match_the_recorded_hashes(model_dir: Path) -> None:
    record = json.loads((model_dir / "training.json").read_text())
    tracked = (p for p in model_dir.rglob("*") if p.is_file() and ".parastream" not in p.parts)  # (the build cache)
    on_disk = {str(p.relative_to(model_dir)) for p in tracked} - {"training.json"}
    assert set(record["sha256"]) == on_disk
    for name, digest in record["sha256"].items():
        data = (model_dir / name).read_bytes()
        assert len(data) <= MAX_FILE_BYTES, name
        assert hashlib.sha256(data).hexdigest() == digest, name
    assert {"config.yaml", "model.pt", "tokens.json", "am.mvn", "eval.jsonl"} <= on_disk
