"""Settings: every field is in .env.example with its real default, and the environment overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _example() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_env_example_lists_every_setting_with_its_default() -> None:
    example = _example()
    fields = {f"PARASTREAM_{name.upper()}": field for name, field in Settings.model_fields.items()}
    assert set(example) == set(fields)
    for key, field in fields.items():
        assert str(field.default) == example[key], key


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARASTREAM_MAX_SESSIONS", "7")
    monkeypatch.setenv("PARASTREAM_MODEL", "/models/x")
    s = Settings(_env_file=None)
    assert s.max_sessions == 7 and s.model == "/models/x"


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARASTREAM_DEVICE", "tpu")
    with pytest.raises(ValueError):
        Settings(_env_file=None)


def test_workers_default_to_cores_or_gpus() -> None:
    s = Settings(_env_file=None)
    assert s.resolved_workers() >= 1
    assert Settings(_env_file=None, device="cuda").resolved_workers(gpu_count=4) == 4
    assert Settings(_env_file=None, workers=3).resolved_workers(gpu_count=4) == 3



def test_int8_on_a_gpu_is_refused_at_start_with_the_setting_named() -> None:
    from engine.errors import EngineBootError
    from engine.supervisor import Supervisor

    supervisor = Supervisor(Settings(device="cuda", precision="int8", workers=1))
    with pytest.raises(EngineBootError, match="PARASTREAM_PRECISION=int8"):
        supervisor._make_slots(gpu_count=1)


def test_sentence_models_go_together() -> None:
    assert not Settings(_env_file=None).sentences_enabled  # off by default: nothing is looked for on a hub
    assert Settings(_env_file=None, vad_model="fsmn-vad", offline_model="paraformer-zh").sentences_enabled
    for partial in ({"vad_model": "fsmn-vad"}, {"offline_model": "paraformer-zh"}, {"punc_model": "ct-punc"}):
        with pytest.raises(ValueError, match="PARASTREAM_"):
            Settings(_env_file=None, **partial)


def test_readme_operations_table_lists_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = dict(re.findall(r"^\| `(PARASTREAM_[A-Z0-9_]+)` \| `([^`]*)` \|", readme, flags=re.MULTILINE))
    fields = {f"PARASTREAM_{name.upper()}": str(field.default) for name, field in Settings.model_fields.items()}
    assert listed == fields
