"""Hotwords in both forms FunASR's clients send them."""

from __future__ import annotations

import pytest

from engine.errors import InvalidOptions
from engine.hotwords import normalize_hotwords


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, ""),
        ("  ", ""),
        ("阿里巴巴 达摩院", "阿里巴巴 达摩院"),
        ("阿里巴巴\t 达摩院  阿里巴巴", "阿里巴巴 达摩院"),
        ('{"阿里巴巴": 20, "达摩院": 10}', "阿里巴巴 达摩院"),  # FunASR's clients' JSON: the weights are ignored
        ("{}", ""),
        ('["阿里巴巴", "达摩院"]', "阿里巴巴 达摩院"),
    ],
)
def test_normalised(given: str | None, expected: str) -> None:
    assert normalize_hotwords(given) == expected


@pytest.mark.parametrize("bad", ['{"a": 1', "[1, 2]", '{"a b": 1}', "x" * 65, " ".join(["w"] * 257), "a\x00b"])
def test_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(InvalidOptions):
        normalize_hotwords(bad)
