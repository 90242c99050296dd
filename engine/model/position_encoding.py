"""FunASR's streaming position encoding at a per-stride cost that does not grow with the session's age.

``StreamSinusoidalPositionEncoder.forward`` (funasr 1.4.16) computes sin/cos for *every* position since the
session began, ``arange(1, start_idx + T + 1)``, and then keeps the last ``T`` rows. Its cost grows linearly with the
session's age: at one hour (60,000 LFR frames) it computes 60,000 x d sines and cosines for 15 frames.

:class:`StridePositionEncoder` computes only the ``T`` positions it keeps, with FunASR's own ``encode``. Every
element of the encoding is a function of its position and dimension alone (``sin``/``cos`` of ``position *
inv_timescale``, elementwise), so the rows come out bit-identical; ``tests/engine/model/test_position_encoding.py`` checks
that against FunASR's module at ages up to four hours, for the tiny and the real model's width.

:func:`install` puts it on a loaded model *instance* in place of FunASR's module (the package is not patched; the
module has no parameters, so the state dict is unchanged). Only the serving path installs it: references that
check the service run FunASR's own module on a model loaded separately.
"""

from __future__ import annotations

from typing import Any

import torch
from funasr.models.transformer.embedding import StreamSinusoidalPositionEncoder


class StridePositionEncoder(StreamSinusoidalPositionEncoder):  # type: ignore[misc]  # funasr is untyped
    """``StreamSinusoidalPositionEncoder`` computing only the current stride's positions."""

    def forward(self, x: torch.Tensor, cache: dict[str, Any] | None = None) -> torch.Tensor:
        _, timesteps, input_dim = x.size()
        start_idx = 0
        if cache is not None:
            start_idx = cache["start_idx"]
            cache["start_idx"] += timesteps
        positions = torch.arange(start_idx + 1, start_idx + timesteps + 1)[None, :]
        encoded: torch.Tensor = self.encode(positions, input_dim, x.dtype).to(x.device)
        return x + encoded


def install(model: Any) -> bool:
    """Swap FunASR's streaming position encoder for :class:`StridePositionEncoder` on ``model``'s encoder.

    Returns whether it was swapped (other architectures keep theirs).
    """
    encoder = getattr(model, "encoder", None)
    if type(getattr(encoder, "embed", None)) is not StreamSinusoidalPositionEncoder:
        return False
    assert encoder is not None
    encoder.embed = StridePositionEncoder()
    return True
