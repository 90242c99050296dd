"""The audio units Parastream counts in, each defined once.

FunASR's streaming Paraformer hears 16 kHz audio and counts `chunk_size` in LFR frames of 60 ms (960 samples);
the default chunk_size [0, 10, 5] strides 10 frames, 600 ms. Rings, workers and snapshots count 16 kHz samples;
an 8 kHz client is resampled on arrival (engine/audio.py), and what a client is told is at its own rate.
"""

from __future__ import annotations

SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = 960
DEFAULT_CHUNK_SIZE = (0, 10, 5)
STRIDE_SAMPLES = DEFAULT_CHUNK_SIZE[1] * SAMPLES_PER_FRAME  # 9600 samples: the default 600 ms stride
