"""The batched encoder on ONNX Runtime (`PARASTREAM_BACKEND=onnx`): FunASR's own encoder layers, exported with their
attention caches as inputs and outputs.

Why the encoder, and why ONNX Runtime: the encoder is about 80 % of a stride, and at the batch sizes a loaded worker
actually runs (1 to 4) PyTorch eager spends much of it outside the matrix products (MKL's kernel choice for
15-row matrices, and per-op overhead); `docs/runtime.md` has the measured comparison. FunASR's own exported graphs
(`model.onnx`) have no attention caches, so they compute look-back 0/0 only; this graph takes each session's
key/value cache, left-padded to the batch's longest, and returns the keys and values each layer attended to, from
which `engine.model.batched_step` cuts every session's next cache exactly as in the PyTorch path.

`EncoderStack` is the computation: `engine.model.batched_step.sanm_layer`, the eager path's own layer (FunASR's
`forward_qkv`, `forward_fsmn`, `forward_attention`, layer norms and feed-forwards; nothing re-implemented), over all
layers, traced by torch's TorchScript exporter (`dynamo=False`: the default dynamo exporter needs `onnxscript`, which
is also why FunASR's own `export()` fails on torch 2.13). Dynamic axes: batch, chunk length, cache length.

Build once, reuse after: `artefact()` exports into `<model dir>/.parastream/` (or the user cache when the model dir
is read-only) under a hash of the model's weights and config, the traced code and the torch and onnx versions; a
restart reuses the file, a changed model or changed code gets a new one. The model host builds it (or `parastream
build DIR`) and opens the session before forking, so workers share its weights copy-on-write.

This module imports torch and onnxruntime: engine processes only.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.model.batched_step import sanm_layer

log = logging.getLogger(__name__)

OPSET = 17
INPUTS = ("x", "cur_mask", "k_old", "v_old", "old_mask")
OUTPUTS = ("out", "keys", "values")


class EncoderStack(nn.Module):
    """`SANMEncoderChunkOpt`'s layers over a padded batch, caches in and out (see `BatchedParaformer._encode`).

    x (B, T, D_in): each session's chunk after FunASR's input embedding and look-ahead overlap, right-padded;
    cur_mask (B, T): 1 on real frames; k_old, v_old (layers, B, heads, L, d_k): each session's cache, left-padded;
    old_mask (B, L): 1 on real cached frames. Returns the encoder output (B, T, D) and, per layer, the keys and
    values it attended to (layers, B, heads, L + T, d_k)."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(list(encoder.encoders0) + list(encoder.encoders))
        self.after_norm = encoder.after_norm if encoder.normalize_before else None

    def forward(
        self, x: torch.Tensor, cur_mask: torch.Tensor, k_old: torch.Tensor, v_old: torch.Tensor, old_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys_out, values_out = [], []
        key_mask = torch.cat((old_mask, cur_mask), dim=1)[:, None, :]
        for index, layer in enumerate(self.layers):

            def attend_to(
                k_h: torch.Tensor, v_h: torch.Tensor, index: int = index
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
                keys_out.append(torch.cat((k_old[index], k_h), dim=2))
                values_out.append(torch.cat((v_old[index], v_h), dim=2))
                return keys_out[-1], values_out[-1], key_mask

            x = sanm_layer(layer, x, cur_mask[:, None, :], attend_to)
        if self.after_norm is not None:
            x = self.after_norm(x)
        return x, torch.stack(keys_out), torch.stack(values_out)


def cache_shape(encoder: Any) -> tuple[int, int, int]:
    """(layers, heads, d_k) of the encoder's attention caches."""
    attn = encoder.encoders0[0].self_attn
    return len(encoder.encoders0) + len(encoder.encoders), attn.h, attn.d_k


def content_hash(model_dir: Path) -> str:
    """What the artefact depends on: the weights, the config, the traced code (`EncoderStack`, the layer it shares with
    the eager path, and the export settings, read from their source, so no version number can be forgotten), and the
    torch and onnx versions."""
    import onnx

    code = "".join(inspect.getsource(obj) for obj in (EncoderStack, sanm_layer, _export))
    digest = hashlib.sha256(f"{code} opset{OPSET} torch{torch.__version__} onnx{onnx.__version__}".encode())
    for name in ("config.yaml", "model.pt"):
        with open(model_dir / name, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()[:16]


def _cache_dirs(model_dir: Path) -> list[Path]:
    user = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parastream" / "artefacts" / model_dir.name
    return [model_dir / ".parastream", user]


def artefact(encoder: Any, model_dir: Path) -> Path:
    """The exported encoder for `model_dir`: reused when built before for the same content, else built now."""
    name = f"encoder-{content_hash(model_dir)}.onnx"
    for folder in _cache_dirs(model_dir):
        if (folder / name).is_file():
            return folder / name
    for folder in _cache_dirs(model_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return _export(encoder, folder / name)
        except OSError as exc:  # a read-only model dir (a shared hub cache): try the user's cache
            log.info("cannot write the encoder artefact in %s (%s)", folder, exc)
    raise OSError(f"no writable place for the encoder artefact: tried {', '.join(map(str, _cache_dirs(model_dir)))}")


def _export(encoder: Any, path: Path) -> Path:
    started = time.perf_counter()
    stack = EncoderStack(encoder).eval()
    layers, heads, d_k = cache_shape(encoder)
    d_in = int(stack.layers[0].in_size)  # type: ignore[arg-type]  # nn.Module attributes type as Tensor | Module
    example = (
        torch.zeros(2, 15, d_in), torch.ones(2, 15), torch.zeros(layers, 2, heads, 3, d_k),
        torch.zeros(layers, 2, heads, 3, d_k), torch.ones(2, 3),
    )
    axes = {
        "x": {0: "batch", 1: "frames"}, "cur_mask": {0: "batch", 1: "frames"},
        "k_old": {1: "batch", 3: "cached"}, "v_old": {1: "batch", 3: "cached"}, "old_mask": {0: "batch", 1: "cached"},
        "out": {0: "batch", 1: "frames"}, "keys": {1: "batch", 3: "attended"}, "values": {1: "batch", 3: "attended"},
    }
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript (see the module).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                stack, example, tmp, dynamo=False, opset_version=OPSET, input_names=list(INPUTS),
                output_names=list(OUTPUTS), dynamic_axes=axes,
            )
        os.replace(tmp, path)  # atomic: a concurrent start sees the whole file or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("exported the encoder to %s in %.1f s", path, time.perf_counter() - started)
    return path


class OnnxEncoder:
    """An ONNX Runtime session over the exported `EncoderStack`."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads must not spin: a worker shares its core with nothing, but spinning still burns it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = path
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(
        self, x: torch.Tensor, cur_mask: torch.Tensor, k_old: torch.Tensor, v_old: torch.Tensor, old_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feeds = {
            name: np.ascontiguousarray(t.detach().cpu().numpy())
            for name, t in zip(INPUTS, (x, cur_mask, k_old, v_old, old_mask))
        }
        out, keys, values = self.session.run(list(OUTPUTS), feeds)
        return torch.from_numpy(out), torch.from_numpy(keys), torch.from_numpy(values)
