"""Hotwords as clients send them, made into what FunASR's SeACo-Paraformer takes.

FunASR's clients send `hotwords` as a string in one of two forms: space-separated words (`"阿里巴巴 达摩院"`), or a
JSON object of word to weight (`'{"阿里巴巴": 20, "达摩院": 10}'`), the form its Python and HTML5 clients build.
SeACo takes whitespace-separated words and has no weights (weights act only in FunASR's C++ FST decoder), so FunASR's
Python server path ignores them; so do we, after parsing the JSON form that FunASR's Python server would otherwise
split into `{"阿里巴巴":` and `20}`.
"""

from __future__ import annotations

import json

from engine.errors import InvalidOptions

MAX_HOTWORDS = 256
MAX_HOTWORD_CHARS = 64


def normalize_hotwords(value: str | None) -> str:
    """The hotwords as one space-separated string ("" for none), or InvalidOptions saying what is wrong."""
    if value is None or not value.strip():
        return ""
    text = value.strip()
    words: list[str]
    if text.startswith(("{", "[")):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidOptions(f"hotwords looks like JSON but does not parse: {exc.msg}") from exc
        # An object of word to weight (the weights are accepted and ignored: see the module docstring), or a list.
        if not isinstance(parsed, dict | list) or not all(isinstance(k, str) for k in parsed):
            raise InvalidOptions('hotwords as JSON must be an object of word to weight, e.g. {"阿里巴巴": 20}')
        words = [word.strip() for word in parsed]
    else:
        words = text.split()
    words = [word for word in words if word]
    if any(len(word.split()) > 1 for word in words):
        raise InvalidOptions("a hotword cannot contain whitespace")
    if len(words) > MAX_HOTWORDS or any(len(word) > MAX_HOTWORD_CHARS for word in words):
        raise InvalidOptions(f"at most {MAX_HOTWORDS} hotwords of at most {MAX_HOTWORD_CHARS} characters each")
    if any("\x00" in word for word in words):
        raise InvalidOptions("hotwords cannot contain NUL")
    return " ".join(dict.fromkeys(words))  # each word once, in the order given
