"""One stride for many sessions in one forward pass: FunASR's streaming Paraformer, batched across sessions.

Batch-1 streaming on a CPU is bound by memory bandwidth (each stride of the large model reads ~630 MB of encoder
weights for 15 frames), so stacking the strides of several sessions reads the weights once for all of them. FunASR's
own chunk path cannot be stacked naively; this module runs the same module calls (`forward_qkv`, `forward_fsmn`,
`forward_attention`, the layer norms and feed-forwards, the predictor, `output_layer`) over a padded batch and
splits the state back per session. It never patches FunASR: it only calls its modules and reads/writes the
per-session cache dicts in the exact layout FunASR's `forward_chunk` methods use, so a session can go from a batched
stride to an unbatched one (`StreamingModel.step`), to a snapshot, or to another worker at any stride boundary.

What blocks naive stacking, and what is done about it here:

* **Different ages.** A session's encoder key/value cache grows from 0 to `look_back * chunk_size[1]` frames over
  its first strides, and its decoder caches are absent until its first token. Caches are left-padded to the longest
  in the batch and the padded keys are masked out of the attention (FunASR runs `mask=None` at batch 1).
* **Different chunk lengths.** A normal stride is 15 encoder frames (5 carried look-ahead + 10 new), a final stride
  with a remainder or the tail chunk is shorter. Chunks are right-padded; the padded frames are masked out of the
  keys and zeroed before the encoder's (non-causal, within-chunk) FSMN, exactly like FunASR's masked training path.
* **`start_idx`** (the positional offset) and the look-ahead overlap are per session: the input embedding runs per
  session, before padding, through the encoder's own `embed` and `_add_overlap_chunk`.
* **The predictor's cache** becomes `(1, B)` after a batched call, so the CIF predictor (cheap, and a Python loop
  over rows anyway) runs per session on its own rows.
* **Zero-token strides** skip the decoder (as FunASR does), so only sessions with tokens enter the decoder batch;
  their token counts differ, so the decoder input is right-padded. Its FSMN is causal (`sanm_shfit` > 0: no right
  context), so right padding never reaches a real position, and its cache keeps the last `kernel_size - 1` columns,
  which is all the next stride reads.
* **The tail chunk** (a final remainder under 60 ms, or an exact multiple of the stride) takes FunASR's own path per
  session: the cached look-ahead features, scaled in place, replace the input.

* **The encoder on another runtime** (`PARASTREAM_BACKEND=onnx`): the layers run as one exported graph
  (`engine.model.onnx_encoder`), so per-session caches go in stacked and left-padded, and each session's next cache is cut
  from the keys and values that come out, by the same `_next_kv` as the eager path. Everything around the layers
  (input embedding, predictor, decoder) stays eager.

Output equals the unbatched path up to float rounding: padded keys get exactly zero weight, but matrix products over a
different number of rows or keys may round differently in the last bit. Tests compare logits with a tolerance and
tokens exactly where the top-2 logit margin is not a near-tie (`tests/engine/model/test_batched_step.py`).

It is one module over 400 lines on purpose: it is one concept, a batched copy of FunASR's `forward_chunk` chain,
and each obstacle above is handled at one place in that chain; split, the padding and masking rules would be spread
across files that must change together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.messages import StreamOptions

__all__ = ["BatchItem", "BatchedParaformer", "EncoderRuntime", "sanm_layer", "supports_batching"]

# (x, cur_mask, k_old, v_old, old_mask) -> (out, keys, values): `engine.model.onnx_encoder.EncoderStack`'s signature.
EncoderRuntime = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]


@dataclass
class BatchItem:
    """One session's stride: its FunASR cache and its fbank features (or None for the tail chunk)."""

    cache: dict[str, Any]
    speech: torch.Tensor | None  # (1, frames, feat_dim) LFR features; None: tail chunk (cached look-ahead only)
    is_final: bool
    opts: StreamOptions


def supports_batching(model: Any) -> str | None:
    """None if `model` has the structure this module batches; else why not (the caller then runs per session)."""
    enc, dec = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if type(enc).__name__ != "SANMEncoderChunkOpt" or type(dec).__name__ != "ParaformerSANMDecoder":
        return f"encoder/decoder {type(enc).__name__}/{type(dec).__name__} not supported"
    if getattr(model, "beam_search", None) is not None:
        return "beam search is not batched"
    if getattr(enc, "overlap_chunk_cls", None) is None:
        return "encoder without chunking"
    assert dec is not None
    for layer in dec.decoders:
        fsmn = layer.self_attn
        if fsmn is not None and fsmn.pad_fn.padding[1] != 0:
            return "decoder FSMN with right context"
    if dec.decoders2 is not None:
        return "decoder with FSMN-only blocks (decoders2)"
    return None


def _mask_lengths(lengths: list[int], total: int, device: torch.device, left_pad: bool = False) -> torch.Tensor:
    """(B, total) float mask: 1 on each row's first (or, left_pad, last) `lengths[i]` positions."""
    pos = torch.arange(total, device=device)[None, :]
    n = torch.tensor(lengths, device=device)[:, None]
    valid = pos >= (total - n) if left_pad else pos < n
    return valid.to(torch.float32)


def _stack_left_padded(parts: list[torch.Tensor | None], dim: int, like: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Concatenate per-session (1, ..., L_i, ...) caches on dim 0, left-padding dim `dim` with zeros to max L_i."""
    lengths = [0 if p is None else p.shape[dim] for p in parts]
    longest = max(lengths)
    shape = list(like.shape)
    shape[0], shape[dim] = len(parts), longest
    if longest and all(n == longest for n in lengths):
        return torch.cat(parts, dim=0), lengths  # type: ignore[arg-type]
    out = like.new_zeros(shape)
    for i, (part, n) in enumerate(zip(parts, lengths)):
        if n:
            assert part is not None
            out[i : i + 1].narrow(dim, longest - n, n).copy_(part)
    return out, lengths


def sanm_layer(
    layer: Any,
    x: torch.Tensor,
    fsmn_mask: torch.Tensor,
    attend_to: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """One `EncoderLayerSANM` over a padded batch, with FunASR's own module calls in `forward_chunk`'s order.
    `attend_to(k_h, v_h) -> (keys, values, key_mask)` gives what the chunk's queries attend to: its own keys and values
    after the session's cache, and which of them are real. Shared by the eager path and the exported graph
    (`engine.model.onnx_encoder.EncoderStack`), so the two compute the same function."""
    residual = x
    if layer.normalize_before:
        x = layer.norm1(x)
    attn = layer.self_attn
    q_h, k_h, v_h, v = attn.forward_qkv(x)
    keys, values, key_mask = attend_to(k_h, v_h)
    fsmn_memory = attn.forward_fsmn(v, fsmn_mask)
    q_h = q_h * attn.d_k ** (-0.5)
    scores = torch.matmul(q_h, keys.transpose(-2, -1))
    att = attn.forward_attention(values, scores, key_mask) + fsmn_memory
    x = residual + att if layer.in_size == layer.size else att
    if not layer.normalize_before:
        x = layer.norm1(x)
    residual = x
    if layer.normalize_before:
        x = layer.norm2(x)
    x = residual + layer.feed_forward(x)
    if not layer.normalize_before:
        x = layer.norm2(x)
    return x


class BatchedParaformer:
    """Runs one stride of many sessions of a `ParaformerStreaming` model as one batch."""

    def __init__(self, model: Any, tokenizer: Any, encoder_runtime: EncoderRuntime | None = None) -> None:
        why = supports_batching(model)
        if why:
            raise ValueError(f"cannot batch this model: {why}")
        self.model = model
        self.encoder = model.encoder
        self.decoder = model.decoder
        self.predictor = model.predictor
        self.tokenizer = tokenizer
        # Runs the encoder's layers instead of PyTorch eager (`engine.model.onnx_encoder`); None: eager, the reference.
        self.encoder_runtime = encoder_runtime

    # ------------------------------------------------------------------------------------------------ public

    def step(self, items: list[BatchItem], logits_out: list[torch.Tensor | None] | None = None) -> list[list[str]]:
        """Advance every item's cache by one stride; return each session's tokens for it.

        All items must share `opts` (the caller groups them). `logits_out`, if given, receives each session's
        log-probabilities `(tokens, vocab)` (None for a stride without tokens): tests compare them to batch-1.
        """
        if not items:
            return []
        opts = items[0].opts
        if any(item.opts != opts for item in items):
            raise ValueError("a batch must share StreamOptions")
        with torch.no_grad():
            chunks = [self._encoder_input(item) for item in items]
            enc_out, lengths = self._encode(chunks, [item.cache["encoder"] for item in items], opts)
            acoustic: list[torch.Tensor | None] = []
            for i, item in enumerate(items):
                hidden = enc_out[i : i + 1, : lengths[i]]
                embeds, token_length, _, _ = self.predictor.forward_chunk(
                    hidden, item.cache["encoder"], is_final=item.is_final
                )
                n = int(token_length.round().long().max())
                acoustic.append(embeds[:, :n] if n >= 1 else None)
            rows = [i for i, a in enumerate(acoustic) if a is not None]
            results: list[list[str]] = [[] for _ in items]
            if logits_out is not None:
                logits_out[:] = [None] * len(items)
            if rows:
                scores = self._decode(
                    [enc_out[i : i + 1, : lengths[i]] for i in rows],
                    [acoustic[i] for i in rows],  # type: ignore[misc]
                    [items[i].cache["decoder"] for i in rows],
                    opts,
                )
                for i, am_scores in zip(rows, scores):
                    results[i] = self._tokens(am_scores)
                    if logits_out is not None:
                        logits_out[i] = am_scores
        return results

    # ------------------------------------------------------------------------------------------------ encoder

    def _encoder_input(self, item: BatchItem) -> torch.Tensor:
        """Per session, what `SANMEncoderChunkOpt.forward_chunk` does before its layers (same calls, same order)."""
        enc, cache = self.encoder, item.cache["encoder"]
        device = next(enc.parameters()).device
        if item.speech is None:  # tail chunk: FunASR feeds cache["feats"] itself and scales it in place
            cache["tail_chunk"] = True
            xs = cache["feats"]
        else:
            xs = item.speech.to(device)
        if self.model.normalize is not None:
            xs, _ = self.model.normalize(xs, torch.tensor([xs.shape[1]], device=device))
        xs *= enc.output_size() ** 0.5
        if enc.embed is not None:
            xs = enc.embed(xs, cache)
        if cache["tail_chunk"]:
            feats: torch.Tensor = cache["feats"].to(device)
            return feats
        overlapped: torch.Tensor = enc._add_overlap_chunk(xs, cache)
        return overlapped

    def _encode(
        self, chunks: list[torch.Tensor], caches: list[dict[str, Any]], opts: StreamOptions
    ) -> tuple[torch.Tensor, list[int]]:
        enc = self.encoder
        lengths = [c.shape[1] for c in chunks]
        longest = max(lengths)
        x = chunks[0].new_zeros((len(chunks), longest, chunks[0].shape[2]))
        for i, c in enumerate(chunks):
            x[i, : lengths[i]] = c[0]
        cur_mask = _mask_lengths(lengths, longest, x.device)
        layers = list(enc.encoders0) + list(enc.encoders)
        look_back = opts.encoder_chunk_look_back
        keep_cache = look_back > 0 or look_back == -1
        if self.encoder_runtime is not None:
            return self._encode_with_runtime(x, cur_mask, lengths, caches, len(layers), opts, keep_cache), lengths
        old = [c["opt"] for c in caches]
        new: list[list[dict[str, torch.Tensor] | None]] = [[None] * len(layers) for _ in caches]
        for index, layer in enumerate(layers):
            layer_old = [o[index] if o is not None else None for o in old]
            x, layer_new = self._encoder_layer(layer, x, cur_mask, lengths, layer_old, opts, keep_cache)
            for i, entry in enumerate(layer_new):
                new[i][index] = entry
        if enc.normalize_before:
            x = enc.after_norm(x)
        if keep_cache:
            for cache, entries in zip(caches, new):
                cache["opt"] = entries
        return x, lengths

    def _encode_with_runtime(
        self,
        x: torch.Tensor,
        cur_mask: torch.Tensor,
        lengths: list[int],
        caches: list[dict[str, Any]],
        n_layers: int,
        opts: StreamOptions,
        keep_cache: bool,
    ) -> torch.Tensor:
        """The same layers on `encoder_runtime`: every session's per-layer cache goes in stacked (layers, B, heads,
        L, d_k), left-padded, and each session's next cache is cut from the keys and values that come out, as
        `_next_kv` does for the eager path."""
        old = [c["opt"] if keep_cache else None for c in caches]
        old_lengths = [0 if o is None else int(o[0]["k"].shape[2]) for o in old]
        longest = max(old_lengths)
        sample = self.encoder.encoders0[0].self_attn
        shape = (n_layers, len(caches), sample.h, longest, sample.d_k)
        k_old, v_old = x.new_zeros(shape), x.new_zeros(shape)
        for i, (entries, n) in enumerate(zip(old, old_lengths)):
            if n:
                k_old[:, i, :, longest - n :] = torch.stack([e["k"][0] for e in entries])  # type: ignore[union-attr]
                v_old[:, i, :, longest - n :] = torch.stack([e["v"][0] for e in entries])  # type: ignore[union-attr]
        old_mask = _mask_lengths(old_lengths, longest, x.device, left_pad=True)
        assert self.encoder_runtime is not None
        out, keys, values = self.encoder_runtime(x, cur_mask, k_old, v_old, old_mask)
        if keep_cache:
            per_layer = [self._next_kv(keys[layer], values[layer], old_lengths, lengths, opts) for layer in range(n_layers)]
            for i, cache in enumerate(caches):
                cache["opt"] = [per_layer[layer][i] for layer in range(n_layers)]
        return out.to(x.device)

    def _encoder_layer(
        self,
        layer: Any,
        x: torch.Tensor,
        cur_mask: torch.Tensor,
        lengths: list[int],
        old: list[dict[str, torch.Tensor] | None],
        opts: StreamOptions,
        keep_cache: bool,
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor] | None]]:
        """`EncoderLayerSANM.forward_chunk` + `MultiHeadedAttentionSANM.forward_chunk`, masked, for a batch."""
        new: list[dict[str, torch.Tensor] | None] = [None] * len(lengths)

        def attend_to(k_h: torch.Tensor, v_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            nonlocal new
            if not keep_cache:
                return k_h, v_h, cur_mask[:, None, :]
            k_old, old_lengths = _stack_left_padded([o["k"] if o else None for o in old], 2, k_h)
            v_old, _ = _stack_left_padded([o["v"] if o else None for o in old], 2, v_h)
            keys, values = torch.cat((k_old, k_h), dim=2), torch.cat((v_old, v_h), dim=2)
            key_mask = torch.cat((_mask_lengths(old_lengths, k_old.shape[2], x.device, left_pad=True), cur_mask), dim=1)
            new = self._next_kv(keys, values, old_lengths, lengths, opts)
            return keys, values, key_mask[:, None, :]

        return sanm_layer(layer, x, cur_mask[:, None, :], attend_to), new

    @staticmethod
    def _next_kv(
        keys: torch.Tensor, values: torch.Tensor, old_lengths: list[int], lengths: list[int], opts: StreamOptions
    ) -> list[dict[str, torch.Tensor] | None]:
        """Each session's next key/value cache, as `MultiHeadedAttentionSANM.forward_chunk` builds it, cut from the
        batch's keys and values (each row: left padding, the session's cache, its chunk, right padding).

        FunASR keeps the chunk's frames minus the look-ahead (`k_h[:, :, :-right]`, which is empty when right is 0 or
        the chunk is no longer than the look-ahead) after the old cache and, once a cache exists, only the last
        `look_back * stride` frames. Those frames sit side by side in the batch's row, so the cache is a view of it:
        the same numbers, without a per-session `cat` and copy per layer (they were the batched encoder's largest
        cost outside the matmuls). A view keeps the batch's tensor alive until every session in it has moved on:
        about 1.4x the caches' own size, for one stride."""
        _, stride, right = opts.chunk_size
        look_back = opts.encoder_chunk_look_back
        padded = keys.shape[2] - max(lengths)  # = the longest old cache
        spans = []
        for old, length in zip(old_lengths, lengths):
            kept = max(length - right, 0) if right > 0 else 0
            start, end = padded - old, padded + kept
            if look_back != -1:  # (FunASR trims only an existing cache; a first one, kept <= stride, needs no trim)
                start = max(start, end - look_back * stride)
            spans.append((start, end))
        if len(set(spans)) == 1:  # the steady state: one slice, split into the sessions' views in one call
            start, end = spans[0]
            ks, vs = torch.split(keys[:, :, start:end], 1), torch.split(values[:, :, start:end], 1)
            return [{"k": k, "v": v} for k, v in zip(ks, vs)]
        return [
            {"k": keys[i : i + 1, :, start:end], "v": values[i : i + 1, :, start:end]} for i, (start, end) in enumerate(spans)
        ]

    # ------------------------------------------------------------------------------------------------ decoder

    def _decode(
        self,
        memories: list[torch.Tensor],
        targets: list[torch.Tensor],
        caches: list[dict[str, Any]],
        opts: StreamOptions,
    ) -> list[torch.Tensor]:
        """`ParaformerSANMDecoder.forward_chunk` + log-softmax for the sessions that have tokens this stride."""
        dec = self.decoder
        mem_lengths = [m.shape[1] for m in memories]
        tgt_lengths = [t.shape[1] for t in targets]
        memory = memories[0].new_zeros((len(memories), max(mem_lengths), memories[0].shape[2]))
        x = targets[0].new_zeros((len(targets), max(tgt_lengths), targets[0].shape[2]))
        for i, (m, t) in enumerate(zip(memories, targets)):
            memory[i, : mem_lengths[i]] = m[0]
            x[i, : tgt_lengths[i]] = t[0]
        mem_mask = _mask_lengths(mem_lengths, memory.shape[1], memory.device)
        n_layers = len(dec.decoders)
        fsmn_old = [c["decode_fsmn"] or [None] * n_layers for c in caches]
        opt_old = [c["opt"] or [None] * n_layers for c in caches]
        fsmn_new: list[list[torch.Tensor | None]] = [list(f) for f in fsmn_old]
        opt_new: list[list[Any]] = [list(o) for o in opt_old]
        look_back = opts.decoder_chunk_look_back
        for index in range(dec.att_layer_num):
            layer = dec.decoders[index]
            residual = x
            if layer.normalize_before:
                x = layer.norm1(x)
            x = layer.feed_forward(x)
            if layer.self_attn is not None:
                tgt = layer.norm2(x) if layer.normalize_before else x
                fsmn_out, fsmn_caches = self._decoder_fsmn(layer.self_attn, tgt, tgt_lengths, [f[index] for f in fsmn_old])
                x = residual + fsmn_out
                for i, c in enumerate(fsmn_caches):
                    fsmn_new[i][index] = c
            if layer.src_attn is not None:
                residual = x
                if layer.normalize_before:
                    x = layer.norm3(x)
                att, kv = self._cross_attention(
                    layer.src_attn, x, memory, mem_mask, mem_lengths, [o[index] for o in opt_old], opts
                )
                x = residual + att
                for i, entry in enumerate(kv):
                    opt_new[i][index] = entry
        for layer in dec.decoders3:  # feed-forward only blocks: FunASR adds no residual around them
            if layer.normalize_before:
                x = layer.norm1(x)
            x = layer.feed_forward(x)
        if dec.normalize_before:
            x = dec.after_norm(x)
        if dec.output_layer is not None:
            x = dec.output_layer(x)
        for i, cache in enumerate(caches):
            cache["decode_fsmn"] = fsmn_new[i]
            if look_back > 0 or look_back == -1:
                cache["opt"] = opt_new[i]
        scores = torch.log_softmax(x, dim=-1)
        return [scores[i, : tgt_lengths[i]] for i in range(len(targets))]

    @staticmethod
    def _decoder_fsmn(
        fsmn: Any, tgt: torch.Tensor, lengths: list[int], old: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`MultiHeadedAttentionSANMDecoder.forward` with a cache, for right-padded rows (causal: no right context).

        A session's next conv input starts with the last `kernel_size - 1` columns of its cache (all zeros before its
        first stride, as `pad_fn` gives), so that is all the batch needs; the cache stored back is FunASR's shape."""
        context = fsmn.kernel_size - 1
        b, t, d = tgt.shape
        inputs = tgt.transpose(1, 2)  # (B, D, T)
        ctx = inputs.new_zeros((b, d, context))
        for i, c in enumerate(old):
            if c is not None:
                ctx[i] = c[0, :, -context:]
        x = torch.cat((ctx, inputs), dim=2)
        out = fsmn.fsmn_block(x).transpose(1, 2)
        out = fsmn.dropout(out + tgt)
        caches = [x[i : i + 1, :, : context + lengths[i]].clone() for i in range(b)]
        return out, caches

    @staticmethod
    def _cross_attention(
        att: Any,
        x: torch.Tensor,
        memory: torch.Tensor,
        mem_mask: torch.Tensor,
        mem_lengths: list[int],
        old: list[dict[str, torch.Tensor] | None],
        opts: StreamOptions,
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor] | None]]:
        """`MultiHeadedAttentionCrossAtt.forward_chunk` for a batch: keys are each session's cached frames
        (left-padded) followed by its encoder output (right-padded), the padding masked out."""
        q_h, k_h, v_h = att.forward_qkv(x, memory)
        look_back = opts.decoder_chunk_look_back
        keep = look_back * opts.chunk_size[1]
        new: list[dict[str, torch.Tensor] | None] = [None] * len(old)
        if look_back > 0:
            k_old, old_lengths = _stack_left_padded([o["k"] if o else None for o in old], 2, k_h)
            v_old, _ = _stack_left_padded([o["v"] if o else None for o in old], 2, v_h)
            keys, values = torch.cat((k_old, k_h), dim=2), torch.cat((v_old, v_h), dim=2)
            key_mask = torch.cat(
                (_mask_lengths(old_lengths, k_old.shape[2], x.device, left_pad=True), mem_mask), dim=1
            )
            for i, o in enumerate(old):
                k_i, v_i = k_h[i : i + 1, :, : mem_lengths[i]], v_h[i : i + 1, :, : mem_lengths[i]]
                if o is not None:
                    k_i, v_i = torch.cat((o["k"], k_i), dim=2), torch.cat((o["v"], v_i), dim=2)
                new[i] = {"k": k_i[:, :, -keep:].clone(), "v": v_i[:, :, -keep:].clone()}
        else:
            keys, values, key_mask = k_h, v_h, mem_mask
        q_h = q_h * att.d_k ** (-0.5)
        scores = torch.matmul(q_h, keys.transpose(-2, -1))
        return att.forward_attention(values, scores, key_mask[:, None, :]), new

    # ------------------------------------------------------------------------------------------------ tokens

    def _tokens(self, am_scores: torch.Tensor) -> list[str]:
        """`generate_chunk`'s greedy path: argmax, drop <s>/</s>/blank, ids to tokens."""
        model = self.model
        ids = am_scores.argmax(dim=-1).tolist()
        ids = [i for i in ids if i not in (model.eos, model.sos, model.blank_id)]
        return list(self.tokenizer.ids2tokens(ids))

