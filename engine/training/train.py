"""Train FunASR's ``ParaformerStreaming`` from scratch on synthetic digit strings, with a small loop of our own.

The loop calls the model's own modules and loss (``encoder``, ``_calc_att_predictor_loss``: CIF predictor
length loss plus the decoder's label-smoothed cross-entropy with FunASR's glancing sampler) and never patches
the package. Two traps in funasr 1.4.16 are worked around here, in our code:

1. **The chunk config never varies.** ``ParaformerStreaming.forward`` draws a chunk config index (``random_choice``)
   but ``Paraformer.encode`` drops it, so the encoder always splits with config 0 while the predictor and decoder
   masks follow the drawn one. :func:`streaming_loss` passes the index to the encoder itself.
2. **The start of a stream differs.** Streaming inference prepends the look-ahead cache, all zeros for a new stream
   (``cache["encoder"]["feats"]``, ``chunk_size[0] + chunk_size[2]`` frames), to the first chunk *after* the
   positional encoding (``SANMEncoderChunkOpt._add_overlap_chunk``). A model trained without them learns a
   different alignment: the probe's model added a spurious first token (25.7 % streaming CER against 11.8 %
   offline). :class:`ZeroLead` adds the same frames during training, after the embedding, so that training
   chunks line up with the streaming strides.

CMVN: ``am.mvn`` holds minus the mean and one over the standard deviation of the training set's LFR features.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.model import factory as model_factory
from engine.model import model_dir
from engine.training import synth
from engine.training.dataset import ClipSet

TOKENS: list[str] = ["<blank>", "<s>", "</s>", *synth.DIGITS, "<unk>"]
TOKEN_ID = {t: i for i, t in enumerate(TOKENS)}


def digits_config() -> dict[str, Any]:
    """tiny-random's architecture (4 encoder and 2 decoder blocks of 128) for the 14-token digit vocabulary."""
    return model_factory.model_config("tiny-random")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 30
    max_frames: int = 3000  # LFR frames per batch, padding included
    lr: float = 2e-3
    warmup_steps: int = 500
    grad_clip: float = 5.0
    threads: int = 2


class ZeroLead(torch.nn.Module):
    """The encoder's positional encoding followed by ``frames`` all-zero frames in front (see trap 2)."""

    def __init__(self, pos_enc: torch.nn.Module, frames: int) -> None:
        super().__init__()
        self.pos_enc = pos_enc
        self.frames = frames

    def forward(self, x: torch.Tensor, cache: Any = None) -> torch.Tensor:
        y = self.pos_enc(x)
        return torch.cat([y.new_zeros(y.shape[0], self.frames, y.shape[2]), y], dim=1)


def streaming_loss(model: Any, feats: torch.Tensor, lens: torch.Tensor, ys: torch.Tensor, ys_lens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``ParaformerStreaming.forward``'s loss, with the chunk index reaching the encoder and the zero lead."""
    encoder = model.encoder
    chunks = encoder.overlap_chunk_cls
    ind = chunks.random_choice(model.training)
    lead = chunks.chunk_size[ind] - chunks.stride[ind] - chunks.pad_left[ind]  # chunk_size[0] + chunk_size[2]
    pos_enc = encoder.embed
    encoder.embed = ZeroLead(pos_enc, lead)
    try:
        # masks are computed from the lengths before the embedding runs; the embedding adds `lead` frames.
        encoder_out, encoder_out_lens, _ = encoder(feats, lens + lead, ind=ind)
    finally:
        encoder.embed = pos_enc
    loss_att, acc, _, _, loss_pre, _ = model._calc_att_predictor_loss(encoder_out, encoder_out_lens, ys, ys_lens)
    return loss_att + model.predictor_weight * loss_pre, float(acc)


def cmvn_of(clips: ClipSet) -> tuple[np.ndarray, np.ndarray]:
    """(shift, rescale) = (-mean, 1/std) over every frame of ``clips``."""
    total = np.zeros(model_dir.FEAT_DIM, np.float64)
    squares = np.zeros(model_dir.FEAT_DIM, np.float64)
    frames = 0
    for f in clips.feats:
        f64 = f.astype(np.float64)
        total += f64.sum(0)
        squares += (f64**2).sum(0)
        frames += len(f)
    mean = total / frames
    std = np.sqrt(np.maximum(squares / frames - mean**2, 1e-8))
    return -mean, 1.0 / std


def batches(clips: ClipSet, max_frames: int, rng: np.random.Generator) -> list[list[int]]:
    """Length-sorted buckets of at most ``max_frames`` padded frames, in a shuffled order."""
    order = sorted(range(len(clips)), key=lambda i: (len(clips.feats[i]), i))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1) * len(clips.feats[i]) > max_frames:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def collate(clips: ClipSet, idx: list[int], shift: np.ndarray, rescale: np.ndarray) -> tuple[torch.Tensor, ...]:
    lens = [len(clips.feats[i]) for i in idx]
    feats = np.zeros((len(idx), max(lens), model_dir.FEAT_DIM), np.float32)
    for row, i in enumerate(idx):
        feats[row, : lens[row]] = (clips.feats[i].astype(np.float32) + shift) * rescale
    labels = [[TOKEN_ID[ch] for ch in clips.specs[i].text] for i in idx]
    ys = torch.full((len(idx), max(map(len, labels))), -1, dtype=torch.long)  # -1: the model's ignore_id
    for row, lab in enumerate(labels):
        ys[row, : len(lab)] = torch.tensor(lab)
    return (
        torch.from_numpy(feats),
        torch.tensor(lens),
        ys,
        torch.tensor([len(lab) for lab in labels]),
    )


def train(clips: ClipSet, out_dir: Path, cfg: TrainConfig, log: Any = print) -> dict[str, Any]:
    """Train on ``clips`` and write a loadable model dir (``config.yaml``, ``model.pt``, ``tokens.json``,
    ``am.mvn``) to ``out_dir``. Returns a summary (steps, time, last losses)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    conf = digits_config()
    model = model_dir.instantiate(conf, len(TOKENS), cfg.seed)
    model.train()
    shift, rescale = cmvn_of(clips)
    plan = [batches(clips, cfg.max_frames, rng) for _ in range(cfg.epochs)]
    total_steps = sum(map(len, plan))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine decay to 5 % of the peak
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    started = time.monotonic()
    step = 0
    history: list[dict[str, float]] = []
    for epoch, epoch_batches in enumerate(plan):
        losses, accs = [], []
        for idx in epoch_batches:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss, acc = streaming_loss(model, *collate(clips, idx, shift, rescale))
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            accs.append(acc)
            step += 1
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "acc": float(np.mean(accs))})
        log(f"epoch {epoch + 1}/{cfg.epochs}: loss {history[-1]['loss']:.4f} acc {history[-1]['acc']:.4f} "
            f"({step} steps, {time.monotonic() - started:.0f} s)")

    model.eval()
    write_model_dir(out_dir, conf, model, shift, rescale)
    return {"steps": step, "train_seconds": round(time.monotonic() - started, 1), "history": history}


def write_model_dir(out_dir: Path, conf: dict[str, Any], model: Any, shift: np.ndarray, rescale: np.ndarray) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir.write_config(out_dir / "config.yaml", copy.deepcopy(conf))
    model_dir.write_tokens(out_dir / "tokens.json", TOKENS)
    model_dir.write_am_mvn(out_dir / "am.mvn", shift, rescale)
    model_dir.save_weights(out_dir / "model.pt", model)


def streaming_cer(model_dir: Path, clips: list[tuple[str, np.ndarray]], threads: int = 2) -> tuple[float, list[str]]:
    """CER of FunASR's own streaming loop (``benchmarks.funasr_loop``) over ``(text, int16 pcm)`` clips."""
    from benchmarks.funasr_loop import reference_transcript
    from engine.messages import StreamOptions
    from engine.model.loading import load_automodel
    from engine.training.cer import cer

    automodel = load_automodel(str(model_dir), ncpu=threads)
    hyps = [reference_transcript(automodel, pcm.astype(np.float32) / 32768.0, StreamOptions())[0] for _, pcm in clips]
    return cer((list(text), hyp) for (text, _), hyp in zip(clips, hyps)), ["".join(h) for h in hyps]


def save_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
