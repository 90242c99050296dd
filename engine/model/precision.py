"""Opt-in int8 (`PARASTREAM_PRECISION=int8`): every `nn.Linear` of the model becomes an int8 matmul.

What FunASR's own CPU runtime does by default (`model_quant.onnx`): weights quantised per output channel
(symmetric int8), activations quantised dynamically, on the fly, from their observed range. One thing is
deliberately different. A dynamic quantiser takes one range over the whole input tensor, and in a batched stride that
tensor holds every session's frames: a loud session would coarsen a quiet one's numbers, so a session's tokens would
depend on who shared its batch, and a replayed session (after a crash, a move) could come out different. Here each
row (one frame of one session) is scaled to a peak of 1 before the quantised matmul and scaled back after it, and a
constant row pins the tensor's range to [-1, 1]; so the quantiser's scale and zero point are the same for every
batch, and each row's int8 products depend on that row alone. It is also a finer quantisation than one range per
chunk.

What this does not remove: the fp32 ops around the matmuls round differently in the last bit for different batch
shapes (as in fp32 batching), and int8 rounding can turn such a difference into a whole quantisation step. On the
tiny test model batched int8 stays within the fp32 tolerance of unbatched int8 (tests); on large-random, whose logit
margins are tiny, 18 of 70 served transcripts in batched trials differed from FunASR's loop on the same int8 model
(none at batch 1; `benchmarks/results/bench-large-random.md`). So int8 trades the exactness guarantee for
cost: a session replayed after a crash or a move may not repeat its int8 tokens exactly. fp32 keeps it.

The weights are quantised and packed (fbgemm) once, in the model host before it forks workers, so workers share
them copy-on-write like the fp32 weights; the fp32 originals are dropped.

This module imports torch: engine processes only.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "int8")


class RowInt8Linear(nn.Module):
    """`nn.Linear` with per-channel int8 weights and per-row dynamically quantised activations (see the module)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float().cpu()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated (moving to torchao)
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(
                weight, scales, torch.zeros(self.out_features, dtype=torch.int64), axis=0, dtype=torch.qint8
            )
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        bounds = torch.zeros(1, self.in_features)
        bounds[0, 0], bounds[0, min(1, self.in_features - 1)] = 1.0, -1.0
        self.register_buffer("_bounds", bounds, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features)
        peak = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        # The bounds row fixes the tensor's min and max at -1 and 1 (every scaled row lies within them).
        bounds = self.get_buffer("_bounds")
        scaled = torch.cat((rows / peak, bounds), dim=0)
        # reduce_range: 7-bit activations, as fbgemm's dynamic qconfig uses on x86 (no int16 saturation).
        out: torch.Tensor = torch.ops.quantized.linear_dynamic(scaled, self._packed, True)[:-1] * peak
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel, per-row"


def set_precision(model: nn.Module, precision: Precision | str) -> int:
    """Put `model` in `precision` in place; returns how many matmuls were converted (0 for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return 0
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 runs on CPU only (fbgemm); use fp32 on a GPU")
    converted = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, RowInt8Linear(child))
                converted += 1
    return converted
