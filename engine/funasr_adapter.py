"""The only module that calls FunASR for inference: load a streaming Paraformer and step sessions.

Why not ``AutoModel.generate``: FunASR's ``AutoModel.inference`` writes each call's ``cache`` and
``is_final`` into the instance-wide ``self.kwargs`` dict and then reads them back, so two sessions
sharing one ``AutoModel`` can silently decode with each other's cache (wrong text, no exception). Here
every call builds a *private* kwargs dict and calls the model's own pieces (``init_cache``,
``extract_fbank``, ``generate_chunk``) directly, mirroring ``ParaformerStreaming.inference`` line for
line so that results are bit-identical to FunASR's loop (``engine.reference`` checks this in the tests).

This module imports torch and funasr at the top (about 7.5 s and 500 MB): import it only in worker /
model processes, never in the web front end.
"""

from __future__ import annotations

import copy
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch

import funasr
from funasr.utils import postprocess_utils
from funasr.utils.load_utils import extract_fbank

from engine import position_encoding
from engine.batched_step import BatchedParaformer, BatchItem, supports_batching
from engine.messages import StreamOptions
from engine.precision import set_precision

__all__ = [
    "ModelLoadError",
    "StepRequest",
    "StreamOptions",
    "StreamingModel",
    "load_automodel",
    "find_cached_hub_model",
]

# One session's stride for `StreamingModel.step_batch`: (cache, samples, is_final, opts), as `step` takes them.
StepRequest = tuple[dict[str, Any], "np.ndarray | None", bool, StreamOptions]

# FunASR derives the stride from chunk_size[1] * 960: a chunk_size unit is one 60 ms LFR frame at 16 kHz.
SAMPLES_PER_CHUNK_UNIT = 960
SAMPLE_RATE = 16000

# Keys that FunASR's ``inference`` takes as named parameters, so they must not also be in **kwargs.
_NAMED_PARAMS = frozenset({"cache", "key", "tokenizer", "frontend", "data_in", "data_lengths"})
# generate_chunk only checks that ``key[0]`` is not itself a list; the value is never used.
_KEY = ["stream"]

# Files a local model directory needs (the real hub snapshot also has configuration.json and am.mvn).
# FunASR also accepts tokens.txt in place of tokens.json.
_REQUIRED_FILES = ("config.yaml", "model.pt", "tokens.json")

_HUB_PROBE_TIMEOUT_S = 3.0
_DEFAULT_HUB_ENDPOINT = "https://modelscope.cn"  # modelscope_hub's DEFAULT_ENDPOINT


class ModelLoadError(RuntimeError):
    """The model named by ``PARASTREAM_MODEL`` could not be loaded; the message says what to do."""


# ------------------------------------------------------------------------------------------- loading


def load_automodel(spec: str, device: str = "cpu", ncpu: int = 1) -> Any:
    """Load ``spec`` (a local model directory or a FunASR/ModelScope model name) as a ``funasr.AutoModel``.

    * A local directory is loaded without touching the network.
    * A name (``paraformer-zh-streaming`` or ``iic/speech_paraformer-...``) is first looked up in the
      local ModelScope cache; a complete cached snapshot is loaded from disk directly (no network, no
      update check). Otherwise the hub is probed with a short TCP connect: when it is unreachable this
      raises :class:`ModelLoadError` within a second or two, instead of the ~22 s that ModelScope spends
      retrying before FunASR swallows its error and fails with an unrelated "model ... is not
      registered" message. When the hub is reachable the normal FunASR download path runs.

    Dither is forced to 0 after loading (see :func:`_disable_dither`).
    """
    path = Path(spec).expanduser()
    if path.exists():
        return _load_local_dir(path, device, ncpu)
    if _looks_like_path(spec):
        raise ModelLoadError(
            f"PARASTREAM_MODEL={spec!r}: local model directory {str(path)!r} does not exist. "
            f"{_OFFLINE_HINT}"
        )
    return _load_hub_name(spec, device, ncpu)


_OFFLINE_HINT = (
    "Point PARASTREAM_MODEL at a local model directory containing config.yaml, model.pt and tokens.json "
    "(for example a downloaded copy of paraformer-zh-streaming), or build a test model with "
    "`parastream make-model tiny-random DIR` and set PARASTREAM_MODEL=DIR."
)


def find_cached_hub_model(name: str) -> Path | None:
    """The local ModelScope cache directory of hub model ``name`` if a complete snapshot is there."""
    model_id = _hub_model_id(name)
    try:
        from modelscope.hub.snapshot_download import snapshot_download

        # local_files_only: answers from the cache in milliseconds, never opens a connection.
        cached = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # not cached, or modelscope missing/broken: either way there is no usable copy
        return None
    return cached if _is_model_dir(cached) else None


def hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the ModelScope endpoint (or the configured HTTPS proxy) opens in time.

    Run in a daemon thread so a hanging DNS lookup cannot exceed ``timeout`` either.
    """
    host, port = _probe_target()
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, name="parastream-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _probe_target() -> tuple[str, int]:
    # Through a proxy, the proxy is what must answer; otherwise the endpoint modelscope_hub would use.
    candidates = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "MODELSCOPE_ENDPOINT", "MODELSCOPE_DOMAIN")
    endpoint = next((os.environ[k] for k in candidates if os.environ.get(k)), _DEFAULT_HUB_ENDPOINT)
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    url = urlparse(endpoint)
    default_port = 80 if url.scheme == "http" else 443
    return url.hostname or "modelscope.cn", url.port or default_port


def _looks_like_path(spec: str) -> bool:
    """Heuristic: hub names are ``alias`` or ``owner/name``; anything else path-shaped is a directory."""
    return (
        os.path.isabs(spec)
        or spec.startswith((".", "~"))
        or spec.endswith(("/", os.sep))
        or spec.count("/") >= 2
        or os.sep != "/" and os.sep in spec
    )


def _hub_model_id(name: str) -> str:
    from funasr.download.name_maps_from_hub import name_maps_ms

    return name_maps_ms.get(name, name)


def _missing_files(path: Path) -> list[str]:
    missing = [f for f in _REQUIRED_FILES if not (path / f).is_file()]
    if "tokens.json" in missing and (path / "tokens.txt").is_file():
        missing.remove("tokens.json")
    return missing


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and not _missing_files(path)


def _load_local_dir(path: Path, device: str, ncpu: int) -> Any:
    if not path.is_dir():
        raise ModelLoadError(
            f"PARASTREAM_MODEL={str(path)!r} is a file, not a model directory. {_OFFLINE_HINT}"
        )
    missing = _missing_files(path)
    if missing:
        raise ModelLoadError(
            f"PARASTREAM_MODEL={str(path)!r} is not a complete model directory: "
            f"missing {', '.join(missing)}. {_OFFLINE_HINT}"
        )
    return _build(str(path), device, ncpu, what=f"local model directory {str(path)!r}")


def _load_hub_name(name: str, device: str, ncpu: int) -> Any:
    cached = find_cached_hub_model(name)
    if cached is not None:
        return _build(str(cached), device, ncpu, what=f"cached hub model {name!r} at {str(cached)!r}")
    if not hub_reachable():
        host, port = _probe_target()
        raise ModelLoadError(
            f"PARASTREAM_MODEL={name!r} is not an existing local directory, so it was taken as a ModelScope "
            f"hub model name, but the hub could not be reached "
            f"(no connection to {host}:{port} within {_HUB_PROBE_TIMEOUT_S:.0f} s) and the model is "
            f"not in the local ModelScope cache. {_OFFLINE_HINT}"
        )
    return _build(name, device, ncpu, what=f"hub model {name!r}")


def _build(model: str, device: str, ncpu: int, what: str) -> Any:
    try:
        automodel = funasr.AutoModel(
            model=model,
            device=device,
            ncpu=ncpu,
            disable_update=True,  # skips a version check against the package index
            disable_pbar=True,
            log_level="ERROR",
        )
    except Exception as exc:  # FunASR reports a failed download as "model ... is not registered"
        raise ModelLoadError(
            f"PARASTREAM_MODEL: could not load {what}: {type(exc).__name__}: {str(exc)[:500]}. "
            f"{_OFFLINE_HINT}"
        ) from exc
    _check_streaming_model(automodel, what)
    _disable_dither(automodel)
    return automodel


def _check_streaming_model(automodel: Any, what: str) -> None:
    model = automodel.model
    streaming = hasattr(model, "init_cache") and hasattr(model, "generate_chunk")
    if not streaming or automodel.kwargs.get("frontend") is None:
        raise ModelLoadError(
            f"PARASTREAM_MODEL: {what} loaded as {type(model).__name__}, which is not a streaming Paraformer "
            "(expected ParaformerStreaming with a WavFrontendOnline frontend)."
        )


def _disable_dither(automodel: Any) -> None:
    """Set the frontend's fbank dither to 0.

    WavFrontendOnline defaults to dither 1.0 (random noise added to every fbank), so the same audio gives
    different tokens on each run. The frontend reads ``self.dither`` on every call, so setting the
    attribute takes effect at once; the object is shared by ``automodel.kwargs`` and FunASR's baseline
    snapshot of it, so ``generate()`` (the reference loop) sees dither 0 too.
    """
    frontend = automodel.kwargs["frontend"]
    frontend.dither = 0.0
    if isinstance(automodel.kwargs.get("frontend_conf"), dict):
        automodel.kwargs["frontend_conf"]["dither"] = 0.0


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
        self.model: torch.nn.Module = automodel.model
        # FunASR's streaming position encoding recomputes every position since the session began, on every
        # stride; ours computes the stride's own, bit-identically (engine/position_encoding.py says why).
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
        (`engine.onnx_encoder`: built once per model content, reused after)."""
        if backend == "torch":
            return None
        if backend != "onnx":
            raise ValueError(f"backend must be torch or onnx, not {backend!r}")
        if self.batching_unsupported:
            raise ModelLoadError(f"PARASTREAM_BACKEND=onnx needs the batched path: {self.batching_unsupported}")
        if precision != "fp32":
            raise ModelLoadError("PARASTREAM_BACKEND=onnx runs fp32; int8 runs on PARASTREAM_BACKEND=torch (or auto)")
        from engine.onnx_encoder import OnnxEncoder, artefact

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
            if is_final and audio.shape[0] < SAMPLES_PER_CHUNK_UNIT:
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
        encoder, predictor and decoder run batched (`engine.batched_step`), and each cache ends exactly as
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
        if is_final and audio.shape[0] < SAMPLES_PER_CHUNK_UNIT:
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
        return text

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
