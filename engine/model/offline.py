"""The 2pass pipeline's second pass: an offline Paraformer (SeACo-Paraformer, FunASR's ``paraformer-zh``) that decodes
each finished sentence, with hotwords, in batches.

FunASR's 2pass server calls ``model_asr.generate(input=sentence_bytes, **status_dict_asr)`` per sentence, where
``status_dict_asr`` holds ``hotword`` once a client sent hotwords. :meth:`OfflineModel.decode` makes the call
``AutoModel.inference`` makes, ``model.inference(data_in=[audio, ...], key=[...], **kwargs)`` under ``torch.no_grad()``,
with a private kwargs dict per call (never ``AutoModel.generate``, whose instance-wide ``self.kwargs`` is shared
between calls), so a batch of one is bit-identical to ``generate()`` on the same audio and hotwords, and a batch of
several is ``generate(input=[...], batch_size=n)``. A batch pads the shorter items: their log-probabilities then
differ from a batch of one by float rounding only (``tests/engine/model/test_offline.py`` measures it).

FunASR facts this module handles (funasr 1.4.16, ``SeacoParaformer.inference``):

* **Batch-level empty result.** When no item of the batch has a predicted token (``max(pre_token_length) < 1``),
  inference returns ``([],)`` and ``generate()`` returns ``[]`` (the server's ``[0]`` then raises). A single
  item with no tokens inside a batch that has some gets the empty text. Either way the item's result here is
  empty.
* **Too short to featurize.** Very short audio raises inside the frontend (``num_mel_bins too large`` up to 256
  samples with the 25 ms window; empty input ``n must be > 0``) and would take the whole batch down: audio shorter
  than one window (400 samples) is decoded alone, an exception there meaning an empty result; empty audio is not
  decoded at all.
* **Hotwords are model state.** ``inference`` parses the ``hotword`` string into ``self.hotword_list`` *on the
  model* on every call, and the whole batch is biased with that list. Hence one call per hotword string (the
  caller groups items by hotwords) and no concurrent calls from several threads on one model.
* **Hotword strings are also paths and URLs to FunASR.** A string that starts with ``http`` is downloaded with
  ``requests.get``; one ending in ``.txt`` is read as a file when it exists and otherwise silently ignored
  (no biasing at all). The words are passed with one space on each side, which FunASR's own ``strip().split()``
  removes again: the same hotword list, never a download or a file read.
* **More than 49 hotwords** make SeACo pick the 50 best from the attention of the batch's *first* item only
  (``forward_asf6(...)[0]``), so a batched result would depend on its neighbours: with that many, items are
  decoded one per call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.model.loading import load_automodel
from engine.model.vad import private_kwargs

__all__ = ["MIN_DECODABLE_SAMPLES", "OfflineModel", "OfflineResult"]

# One fbank window (25 ms at 16 kHz): shorter audio is decoded alone (FunASR's frontend raises below ~16 ms).
MIN_DECODABLE_SAMPLES = 400
# SeACo's ASF filter (nfilter=50) applies when the hotword list, <s> included, has more than 50 entries.
_ASF_NFILTER = 50
_NAMED = frozenset({"cache", "key", "data_in", "data_lengths", "tokenizer", "is_final"})


@dataclass(frozen=True)
class OfflineResult:
    """One audio's decode: FunASR's tokens (before post-processing), its post-processed text, and per-token
    ``[start_ms, end_ms]`` timestamps relative to the audio's start as ``generate()`` returns them (post-processed:
    one pair per output word; empty for models without timestamps)."""

    tokens: tuple[str, ...] = ()
    text: str = ""
    timestamps: tuple[tuple[int, int], ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not self.text and not self.tokens


class _RecordingTokenizer:
    """FunASR's tokenizer, passed as this call's ``tokenizer=``: every ``ids2tokens`` result is recorded in order
    (``inference`` calls it once per batch item, in batch order); everything else is the tokenizer's own."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[list[str]] = []

    def ids2tokens(self, *args: Any, **kwargs: Any) -> Any:
        tokens = self._inner.ids2tokens(*args, **kwargs)
        self.calls.append(list(tokens))
        return tokens

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class OfflineModel:
    """A loaded offline Paraformer shared by all sessions of a process; calls keep no state on this object."""

    def __init__(self, automodel: Any) -> None:
        self.automodel = automodel
        self.model: Any = automodel.model  # FunASR's SeacoParaformer (or Paraformer)
        base: dict[str, Any] = getattr(automodel, "_base_kwargs_map", {}).get("kwargs") or automodel.kwargs
        self.frontend = base["frontend"]
        self.tokenizer = base["tokenizer"]
        self._kwargs = private_kwargs(base, _NAMED)
        self.supports_hotwords = hasattr(self.model, "generate_hotwords_list")

    @classmethod
    def load(cls, spec: str, device: str = "cpu", ncpu: int = 1) -> OfflineModel:
        """Load ``spec`` (``PARASTREAM_OFFLINE_MODEL``) through ``load_automodel``."""
        return cls(load_automodel(spec, device=device, ncpu=ncpu, role="offline"))

    def decode(
        self, audios: list[np.ndarray], hotwords: str = "", logprobs_out: list[Any] | None = None
    ) -> list[OfflineResult]:
        """Decode each audio (1-D float32 16 kHz in [-1, 1)) with the same ``hotwords`` (space-separated words,
        already normalised; ``""`` = none: no ``hotword`` option at all), in one FunASR inference call.

        Returns one :class:`OfflineResult` per audio, in order; an audio too short to decode (or with no predicted
        token) gives an empty result, never an exception. ``logprobs_out`` (tests; SeACo only): filled with, per
        audio, its decoder log-probabilities ``[tokens, vocab]`` (a tensor, after hotword biasing) or None.
        """
        for audio in audios:
            if not isinstance(audio, np.ndarray) or audio.dtype != np.float32 or audio.ndim != 1:
                raise TypeError("each audio must be a 1-D float32 numpy array of 16 kHz audio in [-1, 1)")
        results = [OfflineResult() for _ in audios]
        if logprobs_out is not None:
            logprobs_out[:] = [None] * len(audios)
        words = hotwords.split()
        if words and not self.supports_hotwords:
            raise ValueError(f"{type(self.model).__name__} takes no hotwords (SeACo-Paraformer does)")
        indices = [i for i, audio in enumerate(audios) if audio.shape[0] >= MIN_DECODABLE_SAMPLES]
        groups = [[i] for i in indices] if len(words) + 1 > _ASF_NFILTER else [indices] if indices else []
        # Shorter than one fbank window: alone, where FunASR's frontend may raise (then: empty), never in a batch.
        short = [[i] for i, audio in enumerate(audios) if 0 < audio.shape[0] < MIN_DECODABLE_SAMPLES]
        for group in groups + short:
            logprobs: list[Any] | None = [] if logprobs_out is not None else None
            try:
                out = self._call([audios[i] for i in group], words, logprobs)
            except Exception:
                if group not in short:
                    raise
                continue  # "num_mel_bins too large" and the like: nothing to decode
            for slot, i in enumerate(group):
                results[i] = out[slot]
                if logprobs_out is not None and logprobs is not None:
                    logprobs_out[i] = logprobs[slot]
        return results

    def _call(self, audios: list[np.ndarray], words: list[str], logprobs: list[Any] | None) -> list[OfflineResult]:
        """One ``model.inference`` call, exactly as ``AutoModel.inference`` makes it for ``generate(input=audios,
        batch_size=len(audios)[, hotword=...])``."""
        kwargs = dict(self._kwargs)
        tokenizer = _RecordingTokenizer(self.tokenizer)
        kwargs["tokenizer"] = tokenizer
        if words:
            # Spaces on both sides: FunASR's str().strip().split() gives the same list, but the string can no longer
            # start with "http" (a download) or end with ".txt" (a file, or else no hotwords at all).
            kwargs["hotword"] = " " + " ".join(words) + " "
        captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        keys = [f"utt{i}" for i in range(len(audios))]
        with _instance_overrides(self.model, self._overrides(len(audios), captured if logprobs is not None else None)):
            with torch.no_grad():  # as AutoModel.inference
                res = self.model.inference(data_in=[a.copy() for a in audios], key=keys, **kwargs)
        items = res[0] if isinstance(res, (list, tuple)) and len(res) > 0 else []
        if not items:  # SeACo's batch-level ([],): no item has a token
            if logprobs is not None:
                logprobs[:] = [None] * len(audios)
            return [OfflineResult() for _ in audios]
        if len(items) != len(audios) or len(tokenizer.calls) != len(audios):
            raise RuntimeError(
                f"FunASR returned {len(items)} results and {len(tokenizer.calls)} token lists for {len(audios)} audios"
            )
        if logprobs is not None:
            decoder_out, lengths = captured[-1]
            logprobs[:] = [decoder_out[i, : int(lengths[i])].clone() if int(lengths[i]) else None for i in range(len(audios))]
        out: list[OfflineResult] = []
        for item, tokens in zip(items, tokenizer.calls):
            stamps = tuple((int(s), int(e)) for s, e in item.get("timestamp", []) or [])
            out.append(OfflineResult(tuple(tokens), str(item.get("text", "")), stamps))
        return out

    def _overrides(self, batch: int, captured: list[tuple[torch.Tensor, torch.Tensor]] | None) -> dict[str, Any]:
        """The instance-level method overrides for one call: none for a lone audio (FunASR's path, bit for bit); for a
        batch, the two that make padding invisible (module docstring); for ``logprobs_out``, the decoder capture."""
        model = self.model
        overrides: dict[str, Any] = {}
        if batch > 1:
            encode = model.encode

            def encode_zero_padded(speech: torch.Tensor, speech_lengths: torch.Tensor) -> Any:
                encoder_out, encoder_out_lens = encode(speech, speech_lengths)
                if isinstance(encoder_out, tuple):
                    encoder_out = encoder_out[0]
                valid = torch.arange(encoder_out.shape[1], device=encoder_out.device)[None, :] < encoder_out_lens[:, None]
                return encoder_out * valid[:, :, None].to(encoder_out.dtype), encoder_out_lens

            overrides["encode"] = encode_zero_padded
            if hasattr(model, "calc_predictor_timestamp"):
                timestamp = model.calc_predictor_timestamp

                def timestamp_per_item(encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, token_num: Any) -> Any:
                    parts = [
                        timestamp(encoder_out[i : i + 1, : int(n)], encoder_out_lens[i : i + 1], token_num[i : i + 1])
                        for i, n in enumerate(encoder_out_lens.tolist())
                    ]
                    return tuple(_pad_cat([part[k] for part in parts]) for k in range(4))

                overrides["calc_predictor_timestamp"] = timestamp_per_item
        if captured is not None:
            if not hasattr(model, "_seaco_decode_with_ASF"):
                raise ValueError("logprobs_out needs a SeACo-Paraformer")
            decode = model._seaco_decode_with_ASF

            def capture(encoder_out: Any, encoder_out_lens: Any, sematic_embeds: Any, ys_pad_lens: Any, **kw: Any) -> Any:
                out = decode(encoder_out, encoder_out_lens, sematic_embeds, ys_pad_lens, **kw)
                captured.append((out, ys_pad_lens))
                return out

            overrides["_seaco_decode_with_ASF"] = capture
        return overrides


def _pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[1, T_i] tensors -> [B, max T_i], zero-padded on the right (as the batched computation would lay them out)."""
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors], dim=0)


@contextlib.contextmanager
def _instance_overrides(model: Any, overrides: dict[str, Any]) -> Iterator[None]:
    """Set ``overrides`` as instance attributes of ``model`` for the duration of one call, then remove them (the
    methods live on the class, so removing restores them). One call at a time per model: FunASR's own hotword
    list is per-model state too."""
    for name, value in overrides.items():
        setattr(model, name, value)
    try:
        yield
    finally:
        for name in overrides:
            delattr(model, name)
