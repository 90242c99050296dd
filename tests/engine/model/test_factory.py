"""engine.model.factory: deterministic random-weight model directories."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine.model.factory import MODEL_FILES, build_random_model, ensure_model, model_config, token_list


def _digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in MODEL_FILES}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = build_random_model("tiny-random", tmp_path / "a", seed=0)
    second = build_random_model("tiny-random", tmp_path / "b", seed=0)
    assert sorted(p.name for p in first.iterdir()) == sorted(MODEL_FILES)
    assert _digests(first) == _digests(second)


def test_different_seed_gives_different_weights(tmp_path: Path) -> None:
    zero = _digests(build_random_model("tiny-random", tmp_path / "s0", seed=0))
    one = _digests(build_random_model("tiny-random", tmp_path / "s1", seed=1))
    assert zero["model.pt"] != one["model.pt"]
    assert zero["am.mvn"] != one["am.mvn"]
    assert zero["config.yaml"] == one["config.yaml"]
    assert zero["tokens.json"] == one["tokens.json"]


def test_config_tokens_and_mvn_contents(tiny_model_dir: Path) -> None:
    conf = yaml.safe_load((tiny_model_dir / "config.yaml").read_text(encoding="utf-8"))
    assert conf == model_config("tiny-random")
    # FunASR's misspelling is required; the correct spelling crashes the constructors.
    assert conf["encoder_conf"]["sanm_shfit"] == 0 and conf["decoder_conf"]["sanm_shfit"] == 5
    assert "sanm_shift" not in conf["encoder_conf"] and "sanm_shift" not in conf["decoder_conf"]
    assert conf["frontend_conf"]["dither"] == 0.0

    tokens = json.loads((tiny_model_dir / "tokens.json").read_text(encoding="utf-8"))
    assert tokens == token_list("tiny-random")
    assert len(tokens) == 64 and tokens[:3] == ["<blank>", "<s>", "</s>"] and tokens[-1] == "<unk>"
    assert len(token_list("large-random")) == 8404

    text = (tiny_model_dir / "am.mvn").read_text(encoding="ascii").splitlines()
    assert text[0] == "<Nnet>" and text[-1] == "</Nnet>"
    assert "<AddShift> 560 560" in text and "<Rescale> 560 560" in text


def test_unknown_kind_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny-random"):
        build_random_model("medium-random", tmp_path)


def test_built_dir_loads_offline_with_weights_and_cmvn(tiny_model_dir: Path) -> None:
    import torch

    from engine.model.loading import load_automodel

    automodel = load_automodel(str(tiny_model_dir), ncpu=1)
    saved = torch.load(tiny_model_dir / "model.pt")
    loaded = automodel.model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert 1.0e6 < sum(v.numel() for v in saved.values()) < 1.2e6

    # am.mvn is picked up by FunASR's loader and parsed into the frontend's (shift, rescale) matrix.
    frontend = automodel.kwargs["frontend"]
    assert Path(frontend.cmvn_file) == tiny_model_dir / "am.mvn"
    lines = (tiny_model_dir / "am.mvn").read_text(encoding="ascii").splitlines()
    shift = np.array(lines[4].split()[3:-1], dtype=np.float32)
    rescale = np.array(lines[6].split()[3:-1], dtype=np.float32)
    assert shift.shape == rescale.shape == (560,)
    np.testing.assert_array_equal(frontend.cmvn[0].numpy(), shift)
    np.testing.assert_array_equal(frontend.cmvn[1].numpy(), rescale)


def test_ensure_model_concurrent_callers_share_one_complete_dir(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_model("tiny-random", tmp_path, seed=3))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    expected = tmp_path / "tiny-random-seed3"
    assert results == [expected] * 3
    # flock-serialised builds over separately opened lock files: one built, the others found it done.
    reference = build_random_model("tiny-random", tmp_path / "direct", seed=3)
    assert _digests(expected) == _digests(reference)
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".trash-" in p.name]
    assert leftovers == []


def test_ensure_model_replaces_an_incomplete_dir(tmp_path: Path) -> None:
    broken = tmp_path / "tiny-random-seed0"
    broken.mkdir()
    (broken / "config.yaml").write_text("partial", encoding="utf-8")
    assert ensure_model("tiny-random", tmp_path) == broken
    assert sorted(p.name for p in broken.iterdir()) == sorted(MODEL_FILES)
    assert (broken / "config.yaml").read_text(encoding="utf-8") != "partial"
