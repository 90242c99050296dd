"""Our stride-only position encoding equals FunASR's streaming one bit for bit, at any session age."""

from __future__ import annotations

import pytest
import torch
from funasr.models.transformer.embedding import StreamSinusoidalPositionEncoder

from engine.model.position_encoding import StridePositionEncoder, install

# Ages in LFR frames (60 ms each): a new stream, inside the first strides, an odd age, 1 hour, 4 hours.
AGES = [0, 5, 15, 1234, 60_000, 240_000]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("width", [128, 512])  # tiny-random's encoder width and the real model's
def test_positions_equal_funasrs_at_every_age(width: int, threads: int) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(width)
        for age in AGES:
            for timesteps in (5, 10, 15):  # look-ahead only, a stride, a stride with its look-ahead
                x = torch.randn(2, timesteps, width, generator=generator)
                theirs_cache, ours_cache = {"start_idx": age}, {"start_idx": age}
                theirs = StreamSinusoidalPositionEncoder()(x.clone(), theirs_cache)
                ours = StridePositionEncoder()(x.clone(), ours_cache)
                assert torch.equal(theirs, ours), (age, timesteps)
                assert theirs_cache == ours_cache == {"start_idx": age + timesteps}
    finally:
        torch.set_num_threads(before)


def test_without_a_cache_positions_start_at_one() -> None:
    x = torch.randn(1, 7, 128)
    assert torch.equal(StreamSinusoidalPositionEncoder()(x.clone()), StridePositionEncoder()(x.clone()))


def test_install_swaps_only_funasrs_streaming_encoder() -> None:
    class Encoder(torch.nn.Module):
        def __init__(self, embed: torch.nn.Module) -> None:
            super().__init__()
            self.embed = embed

    class Model(torch.nn.Module):
        def __init__(self, embed: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = Encoder(embed)

    streaming = Model(StreamSinusoidalPositionEncoder())
    assert install(streaming) and type(streaming.encoder.embed) is StridePositionEncoder
    assert not install(streaming)  # already ours
    other = Model(torch.nn.Linear(2, 2))
    assert not install(other) and isinstance(other.encoder.embed, torch.nn.Linear)
