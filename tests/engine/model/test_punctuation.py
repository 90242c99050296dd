"""engine.model.punctuation: text and cache equal FunASR's generate() over a session's sentences."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import pytest

from engine.model.loading import ModelLoadError, load_automodel
from engine.model.punctuation import PuncModel


@pytest.fixture(scope="module")
def automodel(punc_tiny_model: Path) -> Any:
    return load_automodel(str(punc_tiny_model), role="punc")


@pytest.fixture(scope="module")
def punc(punc_tiny_model: Path) -> PuncModel:
    return PuncModel.load(str(punc_tiny_model))


def sentences(punc: PuncModel, seed: int, count: int = 8) -> list[str]:
    """Space-separated CJK "sentences" as the offline model's text looks (with timestamps FunASR spaces them)."""
    rng = random.Random(seed)
    chars = [t for t in punc.automodel.kwargs["token_list"] if len(t) == 1]
    return [" ".join(rng.choice(chars) for _ in range(rng.randint(1, 45))) for _ in range(count)]


def test_punctuate_equals_generate_with_its_cache(automodel: Any, punc: PuncModel) -> None:
    ours_cache, theirs_cache = punc.new_cache(), {}
    carried = 0
    for text in sentences(punc, seed=0):
        theirs = automodel.generate(input=text, cache=theirs_cache)[0]["text"]
        ours = punc.punctuate(text, ours_cache)
        assert ours == theirs
        assert ours_cache == theirs_cache
        carried += bool(ours_cache["pre_text"])
        assert ours and " " not in ours  # CJK words are joined again
    assert carried  # the cache did carry words into a next sentence


def test_sessions_are_independent(punc: PuncModel) -> None:
    a, b = sentences(punc, seed=1, count=4), sentences(punc, seed=2, count=4)
    alone_a = _run(punc, a)
    alone_b = _run(punc, b)
    cache_a, cache_b = punc.new_cache(), punc.new_cache()
    mixed_a, mixed_b = [], []
    for x, y in zip(a, b):
        mixed_a.append(punc.punctuate(x, cache_a))
        mixed_b.append(punc.punctuate(y, cache_b))
    assert mixed_a == alone_a and mixed_b == alone_b


def _run(punc: PuncModel, texts: list[str]) -> list[str]:
    cache = punc.new_cache()
    return [punc.punctuate(text, cache) for text in texts]


def test_empty_text_is_not_punctuated(punc: PuncModel) -> None:
    cache = punc.new_cache()
    punc.punctuate(sentences(punc, seed=3, count=1)[0], cache)
    before = copy.deepcopy(cache)
    assert punc.punctuate("", cache) == ""
    assert cache == before


def test_load_errors_name_the_punc_setting(tmp_path: Path, offline_tiny_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="PARASTREAM_PUNC_MODEL"):
        PuncModel.load(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="PARASTREAM_PUNC_MODEL.*SeacoParaformer"):
        PuncModel.load(str(offline_tiny_model))
