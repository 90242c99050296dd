"""The only module that calls FunASR for inference: load a streaming Paraformer and step sessions.

Why not ``AutoModel.generate``: FunASR's ``AutoModel.inference`` writes each call's ``cache`` and
``is_final`` into the instance-wide ``self.kwargs`` dict and then reads them back, so two sessions
sharing one ``AutoModel`` can silently decode with each other's cache (wrong text, no exception). Here
every call builds a *private* kwargs dict and calls the model's own pieces (``init_cache``,
``extract_fbank``, ``generate_chunk``) directly, mirroring ``ParaformerStreaming.inference`` line for
line so that results are bit-identical to FunASR's loop (``benchmarks.funasr_loop`` checks this in the tests).

This module imports torch and funasr at the top (about 7.5 s and 500 MB): import it only in worker /
model processes, never in the web front end.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from funasr.utils import postprocess_utils
from funasr.utils.load_utils import extract_fbank

from engine.messages import StreamOptions
from engine.model import position_encoding
from engine.model.batched_step import BatchedParaformer, BatchItem, supports_batching
from engine.model.loading import ModelLoadError, load_automodel
from engine.model.precision import set_precision
from engine.units import SAMPLES_PER_FRAME

__all__ = ["StepRequest", "StreamOptions", "StreamingModel"]

# One session's stride for `StreamingModel.step_batch`: (cache, samples, is_final, opts), as `step` takes them.
StepRequest = tuple[dict[str, Any], "np.ndarray | None", bool, StreamOptions]


# Keys that FunASR's ``inference`` takes as named parameters, so they must not also be in **kwargs.
_NAMED_PARAMS = frozenset({"cache", "key", "tokenizer", "frontend", "data_in", "data_lengths"})
# generate_chunk only checks that ``key[0]`` is not itself a list; the value is never used.
_KEY = ["stream"]

# ---------------------------------------------------------------------------------------- streaming


# StreamOptions lives in engine.messages: the API process builds it without importing torch.


class StreamingModel:
    """A loaded streaming Paraformer that many sessions can share, each with its own cache dict.

    Sessions are independent because nothing per-call is stored on this object or on the FunASR model:
    the session state lives entirely in the ``cache`` dict returned by :meth:`new_cache`.

    **Stride contract.** :meth:`step` processes exactly one iteration of FunASR's ``inference()`` loop.
    The caller cuts a session's audio like this:

    * every full ``opts.stride_samples`` piece: ``step(cache, piece, is_final=False, opts)``;
    * on close, any remaining full strides as above, then ONE ``step(cache, rest, is_final=True, opts)``
      with the remainder, ``0 <= len(rest) < stride_samples``.

    That sequence is exactly what ``inference()`` does for the same audio fed through ``generate()`` in
    pieces of any size with ``is_final=True`` on the last one (FunASR buffers partial strides in
    ``cache["prev_samples"]`` and cuts at the same stride boundaries), so the tokens are identical. Two
    FunASR behaviours carry over on purpose:

    * a final remainder of fewer than 960 samples (60 ms) takes the *tail-chunk* path: those samples are
      never featurized; the encoder re-runs on the cached look-ahead features to flush the last tokens;
    * when the total length is an exact multiple of the stride, the final step has 0 samples (tail-chunk
      path as well) - so does a session that sent no audio at all. That tail step runs the encoder on
      the cached look-ahead features (all zeros in a fresh cache) and may emit tokens even for a session
      without audio: the random-weight models do (2-3 tokens); FunASR's own loop does the same.
    """

    def __init__(self, automodel: Any, precision: str = "fp32", backend: str = "torch", threads: int = 1) -> None:
        self.automodel = automodel
        self.model: Any = automodel.model  # FunASR's ParaformerStreaming (untyped)
        # FunASR's streaming position encoding recomputes every position since the session began, on every
        # stride; ours computes the stride's own, bit-identically (engine/model/position_encoding.py says why).
        position_encoding.install(self.model)
        self.precision = precision
        set_precision(self.model, precision)
        # FunASR keeps a pristine snapshot of its kwargs before any generate() call merged a cache or
        # is_final into them; prefer it over the live dict.
        base = getattr(automodel, "_base_kwargs_map", {}).get("kwargs") or automodel.kwargs
        self.frontend = base["frontend"]
        self.tokenizer = base["tokenizer"]
        # Private copy: nested dicts/lists are copied so no FunASR call can reach our state or vice versa.
        self._kwargs: dict[str, Any] = {
            k: (copy.deepcopy(v) if isinstance(v, (dict, list)) and k not in ("token_list",) else v)
            for k, v in base.items()
            if k not in _NAMED_PARAMS and k != "is_final"
        }
        self._device: str = str(self._kwargs.get("device", "cpu"))
        self._kwargs["device"] = self._device
        # Why batching may be unavailable (another architecture): then step_batch runs sessions one by one.
        self.batching_unsupported: str | None = supports_batching(self.model)
        self.backend = backend
        self.encoder_artefact: Path | None = None
        runtime = self._encoder_runtime(automodel, backend, precision, threads)
        self._batched = None if self.batching_unsupported else BatchedParaformer(self.model, self.tokenizer, runtime)

    @classmethod
    def load(
        cls, spec: str, device: str = "cpu", ncpu: int = 1, precision: str = "fp32", backend: str = "torch", threads: int = 1
    ) -> StreamingModel:
        return cls(load_automodel(spec, device=device, ncpu=ncpu), precision, backend, threads)

    def _encoder_runtime(self, automodel: Any, backend: str, precision: str, threads: int) -> Any:
        """None for PyTorch eager (`torch`, the reference); for `onnx`, the exported encoder's session
        (`engine.model.onnx_encoder`: built once per model content, reused after)."""
        if backend == "torch":
            return None
        if backend != "onnx":
            raise ValueError(f"backend must be torch or onnx, not {backend!r}")
        if self.batching_unsupported:
            raise ModelLoadError(f"PARASTREAM_BACKEND=onnx needs the batched path: {self.batching_unsupported}")
        if precision != "fp32":
            raise ModelLoadError("PARASTREAM_BACKEND=onnx runs fp32; int8 runs on PARASTREAM_BACKEND=torch (or auto)")
        from engine.model.onnx_encoder import OnnxEncoder, artefact

        runtime = OnnxEncoder(artefact(self.model.encoder, Path(automodel.kwargs["model_path"])), threads)
        self.encoder_artefact = runtime.path
        return runtime

    @property
    def device(self) -> str:
        return self._device

    def to(self, device: str) -> StreamingModel:
        """Move the weights (e.g. to ``cuda:N`` in a worker after fork) and use ``device`` for calls."""
        self.model.to(device)
        self._device = str(device)
        self._kwargs["device"] = self._device
        return self

    def _call_kwargs(self, opts: StreamOptions, is_final: bool) -> dict[str, Any]:
        """A fresh kwargs dict per call, with what ``inference()`` puts into it for a streaming call."""
        kwargs = dict(self._kwargs)
        # A new list each time: init_cache stores this object inside the session's cache.
        kwargs["chunk_size"] = list(opts.chunk_size)
        kwargs["encoder_chunk_look_back"] = opts.encoder_chunk_look_back
        kwargs["decoder_chunk_look_back"] = opts.decoder_chunk_look_back
        kwargs["is_final"] = is_final
        return kwargs

    def new_cache(self, opts: StreamOptions) -> dict[str, Any]:
        """A fresh session cache, as ``inference()`` creates on a session's first call."""
        cache: dict[str, Any] = {}
        with torch.no_grad():
            self.model.init_cache(cache, **self._call_kwargs(opts, is_final=False))
        return cache

    def step(
        self, cache: dict[str, Any], samples: np.ndarray | None, is_final: bool, opts: StreamOptions
    ) -> list[str]:
        """Run one stride of a session and return the tokens it produced (possibly none).

        ``samples``: float32 mono 16 kHz audio in [-1, 1]; exactly ``opts.stride_samples`` long when not
        final, ``0 <= len < opts.stride_samples`` when final (``None`` means empty). After the final step
        the cache is reset, as FunASR does. See the class docstring for the stride contract.
        """
        if self.backend != "torch":  # a lone session runs on the optimised encoder too, as a batch of one
            return self.step_batch([(cache, samples, is_final, opts)])[0]
        audio = self._check_samples(samples, is_final, opts)
        kwargs = self._call_kwargs(opts, is_final)
        # no_grad, as AutoModel.inference uses. (inference_mode would turn the cache's tensors into
        # inference tensors, which then cannot be updated in place by any code outside inference_mode.)
        with torch.no_grad():
            # --- one iteration of ParaformerStreaming.inference()'s loop ---
            if is_final and audio.shape[0] < SAMPLES_PER_FRAME:
                cache["encoder"]["tail_chunk"] = True
                speech = cache["encoder"]["feats"]
                speech_lengths = torch.tensor([speech.shape[1]], dtype=torch.int64).to(speech.device)
            else:
                speech, speech_lengths = extract_fbank(
                    [audio],
                    data_type=kwargs.get("data_type", "sound"),
                    frontend=self.frontend,
                    cache=cache["frontend"],
                    is_final=is_final,
                )
            tokens = self.model.generate_chunk(
                speech,
                speech_lengths,
                key=_KEY,
                tokenizer=self.tokenizer,
                cache=cache,
                frontend=self.frontend,
                **kwargs,
            )
            # --- what inference() does after its loop ---
            cache["prev_samples"] = torch.empty(0)
            if is_final:
                self.model.init_cache(cache, **kwargs)
        return list(tokens)

    def step_batch(
        self, requests: list[StepRequest], logits_out: list[Any] | None = None
    ) -> list[list[str]]:
        """One stride for each of several sessions, run as one forward pass where they share options.

        Each request is what :meth:`step` takes, under the same stride contract; the result is each session's
        tokens, in order. Features are extracted per session (cheap, and the frontend's cache is per session), the
        encoder, predictor and decoder run batched (`engine.model.batched_step`), and each cache ends exactly as
        :meth:`step` would leave it, so a session may alternate between the two. On the torch backend a group of one
        runs :meth:`step` itself: at light load the path is FunASR's own, bit for bit (on the onnx backend every
        stride takes the optimised encoder, within the batching tolerance). `logits_out` (tests): per request, its
        log-probabilities or None.
        """
        results: list[list[str]] = [[] for _ in requests]
        if logits_out is not None:
            logits_out[:] = [None] * len(requests)
        groups: dict[StreamOptions, list[int]] = {}
        for index, (_, _, _, opts) in enumerate(requests):
            groups.setdefault(opts, []).append(index)
        for opts, indices in groups.items():
            if len(indices) == 1 and logits_out is None and self.backend == "torch" or self._batched is None:
                for i in indices:
                    cache, samples, is_final, _ = requests[i]
                    results[i] = self.step(cache, samples, is_final, opts)
                continue
            items = [self._batch_item(*requests[i]) for i in indices]
            group_logits: list[Any] = []
            tokens = self._batched.step(items, group_logits if logits_out is not None else None)
            kwargs = self._call_kwargs(opts, is_final=True)
            for i, item, out in zip(indices, items, tokens):
                results[i] = out
                if logits_out is not None:
                    logits_out[i] = group_logits[indices.index(i)]
                # --- what inference() does after its loop, as in step() ---
                item.cache["prev_samples"] = torch.empty(0)
                if item.is_final:
                    with torch.no_grad():
                        self.model.init_cache(item.cache, **kwargs)
        return results

    def _batch_item(
        self, cache: dict[str, Any], samples: np.ndarray | None, is_final: bool, opts: StreamOptions
    ) -> BatchItem:
        audio = self._check_samples(samples, is_final, opts)
        if is_final and audio.shape[0] < SAMPLES_PER_FRAME:
            return BatchItem(cache, None, is_final, opts)  # the tail chunk: cached look-ahead features only
        with torch.no_grad():
            speech, _ = extract_fbank(
                [audio],
                data_type=self._kwargs.get("data_type", "sound"),
                frontend=self.frontend,
                cache=cache["frontend"],
                is_final=is_final,
            )
        return BatchItem(cache, speech, is_final, opts)

    @staticmethod
    def _check_samples(samples: np.ndarray | None, is_final: bool, opts: StreamOptions) -> torch.Tensor:
        stride = opts.stride_samples
        if samples is None:
            samples = np.zeros(0, dtype=np.float32)
        if not isinstance(samples, np.ndarray) or samples.dtype != np.float32 or samples.ndim != 1:
            # FunASR would silently promote int16 to float32 without scaling: refuse instead.
            raise TypeError("samples must be a 1-D float32 numpy array of 16 kHz audio in [-1, 1]")
        n = samples.shape[0]
        if not is_final and n != stride:
            raise ValueError(f"a non-final step needs exactly {stride} samples, got {n}")
        if is_final and n >= stride:
            raise ValueError(f"a final step takes 0 <= n < {stride} samples, got {n}: send full strides first")
        # A private copy: FunASR's loader wraps the caller's array with torch.from_numpy (shared memory),
        # but the caller's buffer may be reused; values are identical either way.
        return torch.from_numpy(samples.copy())

    def text(self, tokens: list[str]) -> str:
        """Tokens -> display text with FunASR's own post-processing (drops <s>, </s>, <unk>).

        For all-CJK token lists this equals concatenating per-stride texts; with Latin word pieces
        FunASR's spacing rules look across the whole list, so prefer calling this on all tokens so far.
        """
        text, *_ = postprocess_utils.sentence_postprocess(tokens)
        return str(text)

    @staticmethod
    def cache_nbytes(cache: Any) -> int:
        """Bytes of tensor storage the cache keeps alive (each storage counted once, views included)."""
        seen: dict[tuple[str, int], int] = {}

        def walk(obj: Any) -> None:
            if isinstance(obj, torch.Tensor):
                storage = obj.untyped_storage()
                seen[(str(obj.device), storage.data_ptr())] = storage.nbytes()
            elif isinstance(obj, dict):
                for value in obj.values():
                    walk(value)
            elif isinstance(obj, (list, tuple)):
                for value in obj:
                    walk(value)

        walk(cache)
        return sum(seen.values())
