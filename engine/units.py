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

# The sentence path (engine/worker/sentences.py) feeds the VAD 60 ms frames cut from the session's start, the frames
# FunASR's own Python client sends (1920 bytes). Before a VAD-reported start it keeps up to PREROLL_KEEP_S of audio
# for FunASR's pre-roll; the ring of a 2pass session is sized with it (engine/settings.py).
VAD_FRAME_SAMPLES = SAMPLES_PER_FRAME
VAD_FRAME_MS = VAD_FRAME_SAMPLES * 1000 // SAMPLE_RATE
PREROLL_KEEP_S = 3.0
