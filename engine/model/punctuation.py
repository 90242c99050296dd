"""The 2pass pipeline's punctuation: FunASR's CT-Transformer, the ``vad_realtime`` variant (``CTTransformerStreaming``)
whose cache carries the unfinished tail of one sentence into the next.

FunASR's 2pass server calls ``model_punc.generate(input=text, cache=status_dict_punc["cache"])`` once per decoded
sentence with a non-empty text. :meth:`PuncModel.punctuate` makes the call ``AutoModel.inference`` makes,
``model.inference(data_in=[text], key=[key], **kwargs)`` under ``torch.no_grad()``, with a private kwargs dict per
call, so text and cache are identical to ``generate()``'s (``tests/engine/model/test_punctuation.py``).

FunASR facts (funasr 1.4.16, ``CTTransformerStreaming.inference``): the cache holds ``pre_text``, the words after the
last full stop / question mark, which are re-read before the next sentence and left out of its output; an empty
text raises ``IndexError`` (``sentence_out[-1]``), so :meth:`punctuate` answers ``""`` without calling (the server
never calls it with an empty text either); a random-weight model can emit a literal ``<unk>`` as a mark.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.model.loading import load_automodel
from engine.model.vad import deep_nbytes, private_kwargs

__all__ = ["PuncModel"]

_NAMED = frozenset({"cache", "key", "data_in", "data_lengths"})
_KEY = ["punc"]


class PuncModel:
    """A loaded punctuation model that sessions share, each with the cache dict from :meth:`new_cache`."""

    def __init__(self, automodel: Any) -> None:
        self.automodel = automodel
        self.model: Any = automodel.model  # FunASR's CTTransformerStreaming (untyped)
        base: dict[str, Any] = getattr(automodel, "_base_kwargs_map", {}).get("kwargs") or automodel.kwargs
        self._kwargs = private_kwargs(base, _NAMED)

    @classmethod
    def load(cls, spec: str, device: str = "cpu", ncpu: int = 1) -> PuncModel:
        """Load ``spec`` (``PARASTREAM_PUNC_MODEL``) through ``load_automodel``."""
        return cls(load_automodel(spec, device=device, ncpu=ncpu, role="punc"))

    def new_cache(self) -> dict[str, Any]:
        """A session's cache as the server starts it (``{}``); FunASR fills in ``pre_text`` on the first call."""
        return {}

    def punctuate(self, text: str, cache: dict[str, Any]) -> str:
        """``generate(input=text, cache=cache)[0]["text"]``: ``text`` with punctuation, the cache updated."""
        if not text:
            return ""
        kwargs = dict(self._kwargs)
        kwargs["cache"] = cache
        with torch.no_grad():  # as AutoModel.inference
            results, _ = self.model.inference(data_in=[text], key=_KEY, **kwargs)
        return str(results[0]["text"])

    @staticmethod
    def cache_nbytes(cache: Any) -> int:
        return deep_nbytes(cache)
