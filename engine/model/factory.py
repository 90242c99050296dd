"""Deterministic random-weight model directories for FunASR's streaming Paraformer.

The machines this project is developed and tested on have no internet, so the real
``paraformer-zh-streaming`` checkpoint (ModelScope) cannot be downloaded there. This module writes model
directories that FunASR's ``AutoModel`` loads exactly like the real one (``config.yaml``, ``model.pt``,
``tokens.json``, ``am.mvn``) but whose weights are drawn from a seeded RNG:

* ``tiny-random``: a 4-block / 128-dim encoder, 2-block decoder, 64 tokens (about 1.1 M parameters,
  4.5 MB). Used by the test-suite: it runs in about 10 ms per 600 ms chunk.
* ``large-random``: the real ``paraformer-large`` online architecture (50-block / 512-dim SANM encoder,
  16-block decoder, 8404 tokens, about 220 M parameters, 880 MB). Its compute and memory cost per
  chunk and per session match the real model, so it is what capacity/latency benchmarks use.

Random weights produce gibberish transcripts (random CJK characters). Only two things about them are
meaningful: *cost* figures (latency, throughput, memory), and *exactness* - the same audio through the
server and through FunASR's own loop must give the same tokens, which a random model checks just as well
as a trained one. Never quote word error rates from these models.

Everything is deterministic: the same ``kind`` and ``seed`` give byte-identical files (checked by sha256
in the tests), so a directory cached on one machine equals one built on another.

The other models of FunASR's 2pass pipeline (``vad``, ``offline-tiny-random`` / ``offline-large-random``,
``punc-tiny-random`` / ``punc-large-random``) are built by :mod:`engine.model.factory_2pass`; :func:`ensure_model`
and :func:`build_random_model` take every kind in :data:`KINDS`.

torch/funasr are imported lazily so that :func:`ensure_model` is cheap when the directory already exists
(the server's parent process and the CLI call it before any model process starts).
"""

from __future__ import annotations

import copy
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.model.factory_2pass import (
    KINDS_2PASS,
    OFFLINE_KINDS,
    PUNC_KINDS,
    build_2pass,
    config_2pass,
    model_files_2pass,
    offline_tokens,
    punc_tokens,
)
from engine.model.model_dir import (
    LFR_M,
    LFR_N,
    N_MELS,
    instantiate,
    random_am_mvn,
    save_weights,
    write_config,
    write_tokens,
)

# The streaming Paraformers built here, then the 2pass pipeline's other models (engine/model/factory_2pass.py).
STREAMING_KINDS: tuple[str, ...] = ("tiny-random", "large-random")
KINDS: tuple[str, ...] = (*STREAMING_KINDS, *KINDS_2PASS)

# Files that make a streaming-model directory complete (model_files(kind) for every kind). ``ensure_model``
# renames a fully written temp dir into place, so an existing final directory normally has all of them; the
# check guards against hand-made partial dirs.
MODEL_FILES: tuple[str, ...] = ("config.yaml", "model.pt", "tokens.json", "am.mvn")

# Architecture values of FunASR's funasr/models/paraformer_streaming/template.yaml (the real
# paraformer-zh-streaming model). NOTE: the shift key really is spelled ``sanm_shfit``; the correct
# spelling raises "unexpected keyword argument" in both the encoder and the decoder.
_LARGE_CONFIG: dict[str, Any] = {
    "model": "ParaformerStreaming",
    "model_conf": {
        "ctc_weight": 0.0,  # no CTC head: the streaming model decodes with the CIF predictor + decoder
        "lsm_weight": 0.1,
        "length_normalized_loss": True,
        "predictor_weight": 1.0,
        "predictor_bias": 1,
        "sampling_ratio": 0.75,
    },
    "encoder": "SANMEncoderChunkOpt",
    "encoder_conf": {
        "output_size": 512,
        "attention_heads": 4,
        "linear_units": 2048,
        "num_blocks": 50,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": "pe_online",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": 11,
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
        "chunk_size": [12, 15],
        "stride": [8, 10],
        "pad_left": [0, 0],
        "encoder_att_look_back_factor": [4, 4],
        "decoder_att_look_back_factor": [1, 1],
    },
    "decoder": "ParaformerSANMDecoder",
    "decoder_conf": {
        "attention_heads": 4,
        "linear_units": 2048,
        "num_blocks": 16,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
        "att_layer_num": 16,
        "kernel_size": 11,
        "sanm_shfit": 5,
    },
    "predictor": "CifPredictorV2",
    "predictor_conf": {
        "idim": 512,
        "threshold": 1.0,
        "l_order": 1,
        "r_order": 1,
        "tail_threshold": 0.45,
    },
    "frontend": "WavFrontendOnline",
    "frontend_conf": {
        "fs": 16000,
        "window": "hamming",
        "n_mels": N_MELS,
        "frame_length": 25,
        "frame_shift": 10,
        "lfr_m": LFR_M,
        "lfr_n": LFR_N,
        # WavFrontendOnline defaults to dither 1.0, which adds random noise to every fbank: the same audio
        # would then give different tokens on each run and nothing could be compared token for token.
        "dither": 0.0,
    },
    "specaug": None,
    "normalize": None,
    "tokenizer": "CharTokenizer",
    "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
}

_VOCAB_SIZES: dict[str, int] = {"tiny-random": 64, "large-random": 8404}

def model_files(kind: str) -> tuple[str, ...]:
    """The files a complete directory of ``kind`` holds."""
    _check_kind(kind)
    if kind in STREAMING_KINDS:
        return MODEL_FILES
    return model_files_2pass(kind)


def model_config(kind: str) -> dict[str, Any]:
    """The ``config.yaml`` contents for ``kind`` (a fresh dict each call)."""
    _check_kind(kind)
    if kind not in STREAMING_KINDS:
        return config_2pass(kind)
    conf = copy.deepcopy(_LARGE_CONFIG)
    if kind == "tiny-random":
        conf["encoder_conf"].update(output_size=128, linear_units=256, num_blocks=4)
        conf["decoder_conf"].update(linear_units=256, num_blocks=2, att_layer_num=2)
        conf["predictor_conf"].update(idim=128)
    return conf


def token_list(kind: str) -> list[str]:
    """``<blank>``=0, ``<s>``=1, ``</s>``=2, single CJK characters, ``<unk>`` last (the real layout)."""
    _check_kind(kind)
    if kind not in STREAMING_KINDS:
        if kind in OFFLINE_KINDS:
            return offline_tokens(kind)
        if kind in PUNC_KINDS:
            return punc_tokens(kind)
        raise ValueError(f"model kind {kind!r} has no tokens")
    n_chars = _VOCAB_SIZES[kind] - 4
    return ["<blank>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(n_chars)] + ["<unk>"]


def build_random_model(kind: str, out_dir: Path, seed: int = 0) -> Path:
    """Write a complete random-weight model directory for ``kind`` into ``out_dir`` and return it.

    ``out_dir`` is created if needed; existing model files in it are overwritten. Not atomic: use
    :func:`ensure_model` where another process may look at the directory while it is being written.
    """
    _check_kind(kind)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind not in STREAMING_KINDS:
        build_2pass(kind, out_dir, seed)
        return out_dir
    conf = model_config(kind)
    tokens = token_list(kind)

    write_config(out_dir / "config.yaml", conf)
    write_tokens(out_dir / "tokens.json", tokens)
    random_am_mvn(out_dir / "am.mvn", seed)
    _write_weights(out_dir / "model.pt", conf, vocab_size=len(tokens), seed=seed)
    return out_dir


def ensure_model(kind: str, cache_dir: Path, seed: int = 0) -> Path:
    """Return ``cache_dir / f"{kind}-seed{seed}"``, building it first if it does not exist.

    Safe when several processes call it at once: builds are serialised by an ``flock`` on a lock file
    (so the 880 MB large model is written once, not once per process), and each build goes into a
    temporary directory that is renamed into place only when every file is written, so the final
    directory is never seen half-written - not even after a crash mid-build.
    """
    _check_kind(kind)
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / f"{kind}-seed{seed}"
    if _is_complete(final, kind):
        return final  # fast path: no lock, no torch import

    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / f".{final.name}.lock"):
        if _is_complete(final, kind):  # another process built it while we waited for the lock
            return final
        if final.exists():
            _discard(final, cache_dir)  # a partial dir not made by us (we only ever rename complete ones)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=cache_dir))
        try:
            build_random_model(kind, tmp, seed)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the model is meant to be shared read-only
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


# --------------------------------------------------------------------------------------------- helpers


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")


def _is_complete(path: Path, kind: str) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in model_files(kind))


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _discard(path: Path, cache_dir: Path) -> None:
    """Move ``path`` out of the way atomically, then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.trash-", dir=cache_dir))
    try:
        os.rename(path, trash / "old")
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    shutil.rmtree(trash, ignore_errors=True)


def _write_weights(path: Path, conf: dict[str, Any], vocab_size: int, seed: int) -> None:
    """Instantiate the model under a fixed seed and save its weights."""
    save_weights(path, instantiate(conf, vocab_size, seed))
