"""FunASR's own ONNX export of a streaming Paraformer: the graphs its C++ runtime, funasr-onnx and sherpa-onnx serve.

`AutoModel(model=DIR).export(type="onnx", quantize=True)` writes `model.onnx` (encoder and predictor),
`decoder.onnx`, and their per-channel dynamic int8 versions `model_quant.onnx` and `decoder_quant.onnx` (MatMuls
only, uint8 weights, as FunASR's published conversions). On torch 2.13 it fails as shipped: since torch 2.9
`torch.onnx.export` defaults to `dynamo=True`, which needs `onnxscript`, and FunASR does not pass `dynamo`
(../shared/reference/peer-runtimes.md). This module runs FunASR's exporter unchanged and only makes that one
default the TorchScript exporter's, for the duration of the call; the funasr package is not patched.

The four graphs, with the config, CMVN and tokens funasr-onnx reads beside them, are cached under
`<model>/.parastream/funasr-onnx-<hash>/` (hash of the weights, the config and the exporter's versions), so a second
benchmark run reuses them and a changed model rebuilds them.

Run: `python -m benchmarks.baselines.funasr_onnx_export MODEL_DIR`
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

log = logging.getLogger(__name__)

GRAPHS = ("model.onnx", "decoder.onnx", "model_quant.onnx", "decoder_quant.onnx")
BESIDE = ("config.yaml", "am.mvn", "tokens.json")  # what funasr_onnx.Paraformer reads from its model dir


def _content_hash(model_dir: Path) -> str:
    import funasr
    import onnx
    import onnxruntime
    import torch

    versions = f"funasr{funasr.__version__} torch{torch.__version__} onnx{onnx.__version__} ort{onnxruntime.__version__}"
    digest = hashlib.sha256(versions.encode())
    for name in ("config.yaml", "model.pt", "am.mvn", "tokens.json"):
        with open(model_dir / name, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()[:16]


def export(model_dir: Path) -> Path:
    """The folder holding FunASR's exported graphs for `model_dir`: reused when present, else exported now (~1 min
    for large-random)."""
    model_dir = Path(model_dir).resolve()
    out = model_dir / ".parastream" / f"funasr-onnx-{_content_hash(model_dir)}"
    if all((out / name).is_file() for name in GRAPHS + BESIDE):
        return out
    import torch

    from engine.model.loading import load_automodel

    started = time.perf_counter()
    automodel = load_automodel(str(model_dir), ncpu=len(os.sched_getaffinity(0)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="funasr-onnx-", dir=out.parent))
    try:
        # The only change to FunASR's export: the TorchScript exporter, as FunASR was written for.
        with mock.patch.object(torch.onnx, "export", functools.partial(torch.onnx.export, dynamo=False)):
            automodel.export(type="onnx", quantize=True, output_dir=str(tmp))
        missing = [name for name in GRAPHS if not (tmp / name).is_file()]
        if missing:
            raise RuntimeError(f"FunASR's export wrote no {', '.join(missing)} in {tmp}")
        for name in BESIDE:
            shutil.copy2(model_dir / name, tmp / name)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)  # atomic: a concurrent reader sees the whole folder or none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported FunASR's ONNX graphs to %s in %.0f s", out, time.perf_counter() - started)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="local model directory (config.yaml, model.pt, am.mvn, tokens.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(export(args.model))


if __name__ == "__main__":
    main()
