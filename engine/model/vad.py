"""The 2pass pipeline's voice activity detector: FunASR's streaming FSMN-VAD, one private cache per session.

FunASR's 2pass server calls ``model_vad.generate(input=frame_bytes, cache=..., is_final=False, chunk_size=60)`` once per
client frame. ``AutoModel.generate`` is unusable for many sessions in one process (its ``inference`` pops ``cache``
from the instance-wide ``self.kwargs`` and merges the call's options into it, so concurrent sessions can read each
other's cache), so :meth:`VadModel.feed` makes exactly the call ``AutoModel.inference`` makes,
``model.inference(data_in=[audio], key=[key], **kwargs)`` under ``torch.no_grad()``, with a private kwargs dict built
per call from FunASR's own baseline snapshot of the model's kwargs (what ``generate()`` restores before every call).
The segments are therefore bit-identical to ``generate()``'s on the same frames (``tests/engine/model/test_vad.py``).

**Input scaling.** ``generate(input=bytes)`` turns raw PCM into float32 with ``funasr.utils.load_utils.load_bytes``:
``np.frombuffer(pcm, int16).astype(float32) / 32768`` (its ``offset`` is 0 for int16). Dividing by 2**15 and
multiplying by ``float32(1/32768)`` are both exact in float32 (a power of two), so ``engine.audio``'s
``astype(float32) * float32(1/32768)`` gives the very same values. (``load_bytes`` also sniffs container headers:
raw PCM whose first bytes happen to read as ``RIFF....WAVE``, ``ID3``, ``OggS``, ``fLaC``, ``....ftyp``, an EBML
magic or two consecutive valid MPEG frame headers is decoded as a file instead. Float input never takes that path.)

This module imports torch and funasr: model processes only.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from engine.model.loading import load_automodel

__all__ = ["VadModel", "deep_nbytes", "private_kwargs", "set_max_sentence_ms"]

# Keys ``FsmnVADStreaming.inference`` takes as named parameters (passed separately, as AutoModel.inference does).
_NAMED = frozenset({"cache", "key", "data_in", "data_lengths"})
_KEY = ["vad"]  # the result's "key"; never used otherwise


class VadModel:
    """A loaded FSMN-VAD that any number of sessions share, each with the cache dict from :meth:`new_cache`.

    Nothing per call is stored on this object. (FunASR's ``init_cache`` copies a ``max_end_silence_time`` call option
    onto the shared model's options; this adapter never passes one, so the model's own configuration holds.)
    """

    def __init__(self, automodel: Any, max_sentence_ms: int | None = None) -> None:
        self.automodel = automodel
        self.model: Any = automodel.model  # FunASR's FsmnVADStreaming (untyped)
        if max_sentence_ms is not None:
            # FunASR reads max_single_segment_time from the model's options (from config.yaml's model_conf), never
            # from a call's kwargs: it is a per-model setting. A reference run through generate() must load its VAD
            # with the same value (set_max_sentence_ms) to match.
            set_max_sentence_ms(automodel, max_sentence_ms)
        # generate() restores self.kwargs from this snapshot before each call; start from the same dict.
        base: dict[str, Any] = getattr(automodel, "_base_kwargs_map", {}).get("kwargs") or automodel.kwargs
        self.frontend = base["frontend"]
        self._kwargs = private_kwargs(base, _NAMED | {"is_final"})
        self._device = str(self._kwargs.get("device", "cpu"))

    @classmethod
    def load(cls, spec: str, device: str = "cpu", ncpu: int = 1, max_sentence_ms: int | None = None) -> VadModel:
        """Load ``spec`` (``PARASTREAM_VAD_MODEL``: a local directory or a hub name) through ``load_automodel``;
        ``max_sentence_ms``: the longest segment before the VAD cuts it (FunASR's ``max_single_segment_time``, 60000
        in fsmn-vad's config), None to keep the model's."""
        return cls(load_automodel(spec, device=device, ncpu=ncpu, role="vad"), max_sentence_ms)

    @property
    def sample_rate(self) -> int:
        return int(self.frontend.fs)

    def new_cache(self) -> dict[str, Any]:
        """An empty session cache: FunASR initialises it on the first :meth:`feed`, as ``generate(cache={})`` does.

        (Initialising it here instead would give the same state, but the server's status dict starts as ``{}``
        and a reset sets it back to ``{}``; keeping that shape keeps the two paths literally the same.)
        """
        return {}

    def feed(self, cache: dict[str, Any], frame: np.ndarray, chunk_ms: int) -> list[list[int]]:
        """One VAD call on one client frame: the ``value`` of ``generate(input=frame, cache=cache, is_final=False,
        chunk_size=chunk_ms)[0]``, i.e. the segments this frame completed or opened, in ms from the session's start:
        ``[[start, -1]]`` a start, ``[[-1, end]]`` an end, ``[[start, end]]`` both, ``[]`` nothing (several at once
        are possible when a frame spans more than one event).

        ``frame``: 1-D float32 16 kHz samples in [-1, 1) (any length; FunASR keeps what is short of a whole
        ``chunk_ms`` stride in the cache). ``chunk_ms``: the stride FunASR cuts the frame into (the 2pass server uses
        ``chunk_size[1] * 60 / chunk_interval`` = 60).
        """
        if not isinstance(frame, np.ndarray) or frame.dtype != np.float32 or frame.ndim != 1:
            raise TypeError("frame must be a 1-D float32 numpy array of 16 kHz audio in [-1, 1)")
        kwargs = dict(self._kwargs)  # private: FunASR writes is_final into it
        kwargs["cache"] = cache
        kwargs["is_final"] = False
        kwargs["chunk_size"] = int(chunk_ms)
        with torch.no_grad():  # as AutoModel.inference
            results, _ = self.model.inference(data_in=[frame.copy()], key=_KEY, **kwargs)
        return [list(map(int, segment)) for segment in results[0]["value"]]

    @staticmethod
    def cache_nbytes(cache: Any) -> int:
        """Approximate bytes the cache keeps alive: tensor and array storage, plus Python containers and numbers
        in FunASR's state objects (``Stats``, ``WindowDetector``: the VAD keeps per-frame scores in lists)."""
        return deep_nbytes(cache)


def set_max_sentence_ms(automodel: Any, max_sentence_ms: int) -> None:
    """Set FSMN-VAD's ``max_single_segment_time`` (ms) on a loaded VAD ``AutoModel``: the model's own option, which
    every session of this model (and ``generate()``) then uses."""
    if max_sentence_ms <= 0:
        raise ValueError(f"max_sentence_ms must be positive, not {max_sentence_ms}")
    automodel.model.vad_opts.max_single_segment_time = int(max_sentence_ms)


def private_kwargs(base: dict[str, Any], drop: frozenset[str] | set[str]) -> dict[str, Any]:
    """A copy of FunASR's baseline kwargs that no FunASR call can reach: nested dicts and lists are deep-copied (as
    ``AutoModel._reset_runtime_configs`` does before every ``generate()``), the shared objects FunASR never copies
    (tokenizer, frontend, token list, ...) are kept by reference, and the ``drop`` keys are left out."""
    keep_shared = {"token_list", "tokenizer", "frontend", "model", "init_param", "model_path"}
    return {
        k: (copy.deepcopy(v) if isinstance(v, (dict, list)) and k not in keep_shared else v)
        for k, v in base.items()
        if k not in drop
    }


def deep_nbytes(obj: Any) -> int:
    """Bytes held by ``obj``: each tensor storage once, numpy arrays, and Python lists/dicts/objects with their
    contents (``sys.getsizeof``), each object once."""
    import sys

    seen: set[int] = set()
    storages: dict[tuple[str, int], int] = {}
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[(str(item.device), storage.data_ptr())] = storage.nbytes()
        elif isinstance(item, np.ndarray):
            total += item.nbytes
        elif isinstance(item, dict):
            total += sys.getsizeof(item)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            total += sys.getsizeof(item)
            stack.extend(item)
        elif isinstance(item, (int, float, bool, str, bytes)) or item is None:
            total += sys.getsizeof(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            total += sys.getsizeof(item)
            stack.extend(vars(item).values())
        else:
            total += sys.getsizeof(item)
    return total + sum(storages.values())
