"""In-process reference transcripts from FunASR's OWN streaming loop, for tests and benchmarks.

The server's answer for a clip must equal, token for token, what FunASR's documented streaming recipe
gives for the same audio::

    cache = {}
    for piece in 600 ms pieces:
        model.generate(input=piece, cache=cache, is_final=<last piece>, chunk_size=[0, 10, 5],
                       encoder_chunk_look_back=4, decoder_chunk_look_back=1)

This module runs exactly that, through ``AutoModel.generate`` (the path the server deliberately avoids
because its shared ``self.kwargs`` mixes sessions up), single-threaded and one session at a time, which
is the situation where that path is correct. Use a model loaded by ``engine.model.adapter.load_automodel``
so that dither is 0; otherwise two runs over the same audio differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.model.adapter import StreamOptions


def reference_transcript(automodel: Any, samples: np.ndarray, opts: StreamOptions) -> tuple[list[str], str]:
    """Run FunASR's own loop over ``samples`` (float32, 16 kHz) in ``opts.stride_samples`` pieces.

    Returns ``(tokens, text)``: every token that ``generate_chunk`` produced, in order, and the
    concatenation of the ``text`` of each ``generate()`` result.

    * ``is_final=True`` goes with the last piece. When the length is an exact multiple of the stride,
      FunASR's ``inference()`` then runs the full last stride as non-final plus an empty final
      (tail-chunk) iteration.
    * Empty audio: one ``generate()`` call with an empty array and ``is_final=True``. FunASR copes: it
      runs a single tail-chunk iteration on the freshly initialised (all-zero) look-ahead features.
    * Threads: ``generate()`` resets ``torch.set_num_threads`` to the AutoModel's ``ncpu`` on every call,
      so the thread count is the one the model was loaded with (``load_automodel(..., ncpu=...)``).
      Output does not depend on it with dither 0.

    Tokens are captured by wrapping ``automodel.model.generate_chunk`` for the duration of the call
    (restored afterwards, also on error): ``generate()`` only returns post-processed text.
    """
    samples = np.asarray(samples)
    if samples.dtype != np.float32 or samples.ndim != 1:
        raise TypeError("samples must be a 1-D float32 array of 16 kHz audio in [-1, 1]")
    stride = opts.stride_samples
    pieces = [samples[i : i + stride] for i in range(0, len(samples), stride)] or [samples[:0]]

    model = automodel.model
    tokens: list[str] = []
    original = model.__dict__.get("generate_chunk")  # normally absent: the method lives on the class
    inner = model.generate_chunk  # bound method (or an existing instance-level wrapper)

    def capturing_generate_chunk(*args: Any, **kwargs: Any) -> list[str]:
        out: list[str] = inner(*args, **kwargs)
        tokens.extend(out)
        return out

    texts: list[str] = []
    model.generate_chunk = capturing_generate_chunk
    try:
        cache: dict[str, Any] = {}
        for index, piece in enumerate(pieces):
            results = automodel.generate(
                input=piece,
                cache=cache,
                is_final=index == len(pieces) - 1,
                chunk_size=list(opts.chunk_size),
                encoder_chunk_look_back=opts.encoder_chunk_look_back,
                decoder_chunk_look_back=opts.decoder_chunk_look_back,
            )
            texts.extend(result["text"] for result in results)
    finally:
        if original is None:
            del model.generate_chunk
        else:
            model.generate_chunk = original
    return tokens, "".join(texts)
