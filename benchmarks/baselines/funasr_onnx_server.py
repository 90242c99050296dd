"""A baseline server: FunASR's exported ONNX graphs, served the way FunASR's C++ runtime serves them.

What an operator who deploys FunASR's C++ WebSocket runtime (or funasr-onnx, or sherpa-onnx) on a CPU gets, behind
the same HTTP/SSE contract as Parastream and the other baselines (benchmarks/baselines/funasr_server.py), so the
same load generator drives it:

* **FunASR's own graphs**: `model.onnx` and `decoder.onnx`, or with `--quantize` the per-channel int8
  `model_quant.onnx` and `decoder_quant.onnx` (the C++ runtime's default), exported by FunASR's exporter
  (benchmarks/baselines/funasr_onnx_export.py). They carry no attention caches, so they compute look-back 0/0.
* **One shared pair of runtime sessions** (encoder+predictor, decoder) for all streams, as the C++ runtime's
  `ParaformerOnline` objects share their `Paraformer`'s sessions. Each runs on one intra-op thread, the runtime's
  `--model-thread-num 1` in FunASR's 2pass start script.
* **A thread pool** of one thread per core (the runtime's `--decoder-thread-num` default) runs the streams' strides;
  ONNX Runtime releases the GIL while it computes, so the threads run at once as C++ threads would.
* **Per-stream state**: the model's cache dict and the streaming frontend (fbank input cache, LFR splice cache,
  reserved waveform). The decoding itself is funasr-onnx's `paraformer_online_bin.Paraformer` (frontend, position
  encoding, CIF, greedy decoding), run unchanged. That class keeps its frontend on the instance, so one instance
  serves one stream; each stream gets a shallow copy that shares the sessions and owns a frontend of its own.

A session's strides run in order, one at a time, like every baseline here. Chunking is FunASR's documented 600 ms
recipe, `chunk_size` [0, 10, 5].

Against FunASR's PyTorch loop at look-back 0/0 the fp32 server agrees token for token on every whole stride
(tested on tiny-random, checked on large-random). It ends a stream its own way: funasr-onnx encodes a last piece of
more than `chunk_size[2]` LFR frames (300 ms) as two chunks, and its tail tokens can differ. The benchmark's clips
are whole strides, where the two agree.

Run: `python -m benchmarks.baselines.funasr_onnx_server --model DIR --port 8001 [--quantize]`
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from benchmarks.baselines.funasr_server import GENERATE_OPTS, Baseline, Session, build_app


class OnnxBaseline(Baseline):
    def __init__(self, model_dir: str, threads: int, quantize: bool) -> None:
        super().__init__("threads", model_dir, threads, ncpu=1)
        self.mode = "funasr-onnx-int8" if quantize else "funasr-onnx-fp32"
        self.quantize = quantize
        self.shared: Any = None
        self.frontend_conf: dict[str, Any] = {}

    @property
    def ready(self) -> bool:
        return self.shared is not None

    def load(self) -> None:
        from funasr_onnx.paraformer_online_bin import Paraformer
        from funasr_onnx.utils.utils import read_yaml

        from benchmarks.baselines.funasr_onnx_export import export

        folder = export(Path(self.model_dir))
        self.frontend_conf = {"cmvn_file": str(folder / "am.mvn"), **read_yaml(folder / "config.yaml")["frontend_conf"]}
        self.shared = Paraformer(
            str(folder), chunk_size=GENERATE_OPTS["chunk_size"], quantize=self.quantize, intra_op_num_threads=1
        )

    def generate(self, session: Session, samples: np.ndarray, is_final: bool) -> str:
        from funasr_onnx.utils.frontend import WavFrontendOnline

        if session.stream is None:  # this stream's own frontend over the shared runtime sessions
            session.stream = copy.copy(self.shared)
            session.stream.frontend = WavFrontendOnline(**self.frontend_conf)
        results = session.stream(samples, param_dict={"cache": session.cache, "is_final": is_final})
        # Each result's "preds" is funasr-onnx's sentence_postprocess output: (sentence, words).
        return "".join(r["preds"][0] for r in results)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local model directory (config.yaml, model.pt, am.mvn, tokens.json)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="strides at once (default: cores)")
    p.add_argument("--quantize", action="store_true", help="serve the int8 graphs (the C++ runtime's default)")
    args = p.parse_args(argv)
    app = build_app(OnnxBaseline(args.model, args.threads, args.quantize))
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")


if __name__ == "__main__":
    main()
