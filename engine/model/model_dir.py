"""Writing model directories that FunASR's ``AutoModel`` loads: the files (``config.yaml``, ``tokens.json``,
``am.mvn``, ``model.pt``) and the seeded instantiation of a FunASR model class. Shared by the random-weight builders
(engine/model/factory.py, factory_2pass.py) and the demo model's training (engine/training/train.py).

torch and funasr are imported only inside the functions that need them.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

# Feature layout shared by every kind: 80 mel bins stacked 7 at a time by LFR -> 560-dim encoder input.
N_MELS = 80
LFR_M = 7
LFR_N = 6
FEAT_DIM = N_MELS * LFR_M

# Weight init draws from torch's process-global RNG, so two builds in threads of one process would
# interleave their draws and both come out wrong. The flock in ensure_model only covers one directory.
_RNG_LOCK = threading.Lock()


def write_tokens(path: Path, tokens: list[str]) -> None:
    path.write_text(json.dumps(tokens, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")


def write_config(path: Path, conf: dict[str, Any]) -> None:
    import yaml  # PyYAML: a dependency of omegaconf, which FunASR uses to read this file

    # sort_keys=False keeps the template's order; the output is a pure function of ``conf``.
    path.write_text(yaml.safe_dump(conf, sort_keys=False, allow_unicode=True), encoding="utf-8")


def random_am_mvn(path: Path, seed: int) -> None:
    """A random ``am.mvn``: shift is small seeded noise and rescale is near 1.

    The real file holds -mean and 1/std of log-mel features (about -10 and 0.25). These values make the
    transform visibly applied (features differ from unnormalised ones) without changing the scale the random
    encoder sees.
    """
    rng = np.random.default_rng(seed)
    write_am_mvn(path, rng.uniform(-0.5, 0.5, FEAT_DIM), rng.uniform(0.9, 1.1, FEAT_DIM))


def write_am_mvn(path: Path, shift: np.ndarray, rescale: np.ndarray) -> None:
    """Kaldi Nnet text with ``<AddShift>`` / ``<Rescale>`` vectors, in the layout of the real ``am.mvn``.

    FunASR's WavFrontendOnline computes ``(feats + shift) * rescale``. Values are formatted with fixed
    precision so the text is deterministic.
    """

    def vec(values: np.ndarray) -> str:
        return " ".join(f"{v:.6f}" for v in values)

    dim = len(shift)  # 560 for the Paraformers (80 mels x 7), 400 for the VAD (80 x 5)
    lines = [
        "<Nnet>",
        f"<Splice> {dim} {dim}",
        "[ 0 ]",
        f"<AddShift> {dim} {dim}",
        f"<LearnRateCoef> 0 [ {vec(shift)} ]",
        f"<Rescale> {dim} {dim}",
        f"<LearnRateCoef> 0 [ {vec(rescale)} ]",
        "</Nnet>",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def save_weights(path: Path, model: Any) -> None:
    import torch

    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # torch.save's zip archive is deterministic for identical tensors, but its internal record prefix is
    # taken from the file's basename - so build dirs must always use the final name ``model.pt``.
    torch.save(state_dict, path)


def instantiate(conf: dict[str, Any], vocab_size: int, seed: int, input_size: int | None = FEAT_DIM) -> Any:
    """The model of ``conf``, built the way ``AutoModel.build_model`` does, its weights drawn under ``seed``."""
    import funasr  # noqa: F401  - importing the package registers the model classes in ``tables``
    import torch
    from funasr.register import tables

    model_class = tables.model_classes.get(conf["model"])
    if model_class is None:
        raise RuntimeError(f"FunASR has no registered model class {conf['model']!r}")
    # build_model passes model_conf merged with the whole config, plus the sizes it derives from the
    # tokenizer (vocab_size) and the frontend (input_size = n_mels * lfr_m; None without a frontend).
    kwargs: dict[str, Any] = copy.deepcopy(conf["model_conf"])
    kwargs.update({k: copy.deepcopy(v) for k, v in conf.items() if k != "model_conf"})
    kwargs.update(vocab_size=vocab_size, input_size=input_size)

    # fork_rng: seed locally without disturbing the caller's global RNG state.
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(**kwargs)
