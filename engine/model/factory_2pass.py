"""Model directories for the rest of FunASR's 2pass pipeline: FSMN-VAD, offline SeACo-Paraformer, CT-Transformer punc.

FunASR's 2pass server runs, beside the streaming Paraformer that :mod:`engine.model.factory` builds, three more
models. The hubs are unreachable here, so this module writes directories that ``funasr.AutoModel(model=DIR)`` loads
exactly like the real downloads, built from FunASR's own classes:

* ``vad``: ``FsmnVADStreaming`` (the real ``fsmn-vad``, iic/speech_fsmn_vad_zh-cn-16k-common-pytorch):
  ``config.yaml``, ``model.pt``, ``am.mvn`` (no tokens: the VAD has no tokenizer). Its weights are CHOSEN, not
  drawn, so that it finds the pauses in speech-like audio (see "The VAD's weights" below). One size only: the real
  model is small (0.43 M parameters).
* ``offline-tiny-random`` / ``offline-large-random``: ``SeacoParaformer`` (the real ``paraformer-zh``,
  iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch): ``config.yaml``, ``model.pt``,
  ``tokens.json``, ``am.mvn`` and ``seg_dict``. With a ``CifPredictorV3`` it returns per-token timestamps, and
  with ``hotword=...`` its bias path (``_seaco_decode_with_ASF`` with a non-empty hotword list) runs. ``seg_dict``
  is needed for hotwords: without it FunASR looks the whole hotword (``"丁七"``) up as ONE token, which is
  ``<unk>``; with it, ``generate_hotwords_list`` splits the word into its characters (the real model ships one).
* ``punc-tiny-random`` / ``punc-large-random``: ``CTTransformerStreaming`` (the ``vad_realtime`` variant,
  iic/punc_ct-transformer_zh-cn-common-vad_realtime-vocab272727), which carries ``cache["pre_text"]`` across calls:
  ``config.yaml``, ``model.pt``, ``tokens.json`` (no frontend, so no ``am.mvn``).

Sizes (seed 0): ``vad`` 0.43 M parameters, model.pt 1.7 MB; ``offline-tiny-random`` 2.6 M, 10 MB (128 wide, 4
encoder / 2 decoder / 1 bias-decoder blocks, 64 tokens); ``offline-large-random`` 247 M, 990 MB;
``punc-tiny-random`` 73 k, 0.3 MB (64 wide, 2 blocks, 68 tokens); ``punc-large-random`` 72 M, 289 MB (its 272727 x
256 embedding is 70 M of them) plus a 2.7 MB tokens.json.

Architecture values: funasr 1.4.16 ships no ``template.yaml`` for these three models (``find funasr -name
"*.yaml"`` finds nothing), so the "large"/real values below are those of the published models' ``config.yaml``
files, each checked against the constructor signature it feeds in the installed package (a wrong or misspelt key
raises there: ``sanm_shfit`` really is spelt so). Where a value is a class default, the comment says so.

The same ``kind`` and ``seed`` give byte-identical files. The seeded kinds draw every weight under ``seed``; the
VAD's weights do not depend on the seed at all (its files are identical for every seed).

The VAD's weights
-----------------
FunASR's VAD scores each 10 ms frame with the FSMN (input: 5 stacked 80-bin log-mel frames after CMVN, 400 dims;
output: a softmax over 248 classes of which class 0 is "silence") and calls a frame speech when
``P(speech) >= P(silence) + 0.6``, i.e. when ``P(silence) <= 0.2``. Here every weight is zero except one path:

1. Energy: ``in_linear1`` unit b (b < 40) averages the CMVN'd log-mel of mel bin b (0-1.9 kHz, where voiced speech
   carries its energy) over the 5 stacked frames; ``in_linear2`` + ReLU undo the CMVN and give each bin's excess
   over a floor, ``relu(logmel_b - 15)`` (in nats); FSMN block 0's projection averages the 40 excesses into ``S``.
2. Smoothing: block 0's memory taps make ``M``, the mean of ``S`` over the last 200 ms (20 frames), so the short
   gaps between syllables do not flip the decision; its affine + ReLU give ``M`` and ``relu(M - 2)``, blocks 1-3
   pass both through (identity projections, zero memory), and ``out_linear1`` gives ``min(M, 2)``.
3. Output: ``out_linear2`` makes the silence logit ``10 * (0.311 - min(M, 2)) + ln 247`` and every other logit 0,
   so ``P(silence) = sigmoid(10 * (0.311 - min(M, 2)))``: smooth and decreasing in energy, 0.2 (speech) at
   ``M = 0.45``. As ``M`` lies in [0, 2] for ANY input, ``P(silence)`` lies in [4.6e-8, 0.957]: FunASR's
   ``math.log(P)`` and ``math.log(1 - P)`` never see 0 (its "math domain error" trap).

The numbers were read off measurements of :func:`benchmarks.audio.synth_speechlike` through this frontend: inside
its sentences ``M >= 0.45`` on 97 % of frames, and the longest run below is 100 ms; its -40 dBFS background noise
alone gives ``M <= 0.3`` (silence), the -60 dBFS pauses of :func:`benchmarks.audio.synth_sentences` and digital
silence 0, full-scale noise about 7 (capped to 2: speech). The CMVN in ``am.mvn`` is a plain ``(x - 12) / 4`` on
every dimension (the real file holds per-dimension statistics of real speech, of the same order).

VAD config: the real ``model_conf`` is kept (800 ms end silence, 60 s ``max_single_segment_time``, 150 ms
speech/silence windows, 200 ms look-back, 100 ms look-ahead). One line is added: a top-level ``dynamic_silence:
false``. funasr 1.4.16 otherwise replaces the end silence by a schedule (``DEFAULT_SILENCE_SCHEDULE``: 2000 ms in
a stream's first 10 s, i.e. 1850 ms after the 150 ms window, and ``speech_noise_thres`` 0.5) unless the caller
passes ``max_end_silence_time``; FunASR's 2pass server passes neither, so without the line the real config's
800 ms would not be what runs.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np

from engine.model.model_dir import (
    FEAT_DIM,
    LFR_M,
    LFR_N,
    N_MELS,
    instantiate,
    random_am_mvn,
    save_weights,
    write_am_mvn,
    write_config,
    write_tokens,
)

VAD_KIND = "vad"
OFFLINE_KINDS: tuple[str, ...] = ("offline-tiny-random", "offline-large-random")
PUNC_KINDS: tuple[str, ...] = ("punc-tiny-random", "punc-large-random")
KINDS_2PASS: tuple[str, ...] = (VAD_KIND, *OFFLINE_KINDS, *PUNC_KINDS)

# ------------------------------------------------------------------------------------------------------- VAD

VAD_LFR_M = 5  # the real fsmn-vad stacks 5 frames with shift 1: 80 * 5 = 400 inputs
VAD_FEAT_DIM = N_MELS * VAD_LFR_M

# The real fsmn-vad config.yaml (iic/speech_fsmn_vad_zh-cn-16k-common-pytorch). Every model_conf value equals the
# VADXOptions default in funasr/models/fsmn_vad_streaming/model.py; the encoder_conf is the FSMN's real size.
_VAD_CONFIG: dict[str, Any] = {
    "frontend": "WavFrontendOnline",
    "frontend_conf": {
        "fs": 16000,
        "window": "hamming",
        "n_mels": N_MELS,
        "frame_length": 25,
        "frame_shift": 10,
        "dither": 0.0,
        "lfr_m": VAD_LFR_M,
        "lfr_n": 1,
    },
    "model": "FsmnVADStreaming",
    "model_conf": {
        "sample_rate": 16000,
        "detect_mode": 1,
        "snr_mode": 0,
        "max_end_silence_time": 800,
        "max_start_silence_time": 3000,
        "do_start_point_detection": True,
        "do_end_point_detection": True,
        "window_size_ms": 200,
        "sil_to_speech_time_thres": 150,
        "speech_to_sil_time_thres": 150,
        "speech_2_noise_ratio": 1.0,
        "do_extend": 1,
        "lookback_time_start_point": 200,
        "lookahead_time_end_point": 100,
        "max_single_segment_time": 60000,
        "snr_thres": -100.0,
        "noise_frame_num_used_for_snr": 100,
        "decibel_thres": -100.0,
        "speech_noise_thres": 0.6,
        "fe_prior_thres": 0.0001,
        "silence_pdf_num": 1,
        "sil_pdf_ids": [0],
        "speech_noise_thresh_low": -0.1,
        "speech_noise_thresh_high": 0.3,
        "output_frame_probs": False,
        "frame_in_ms": 10,
        "frame_length_ms": 25,
    },
    "encoder": "FSMN",
    "encoder_conf": {
        "input_dim": VAD_FEAT_DIM,
        "input_affine_dim": 140,
        "fsmn_layers": 4,
        "linear_dim": 250,
        "proj_dim": 128,
        "lorder": 20,
        "rorder": 0,
        "lstride": 1,
        "rstride": 0,
        "output_affine_dim": 140,
        "output_dim": 248,
    },
    # Not in the real file: see the module docstring ("VAD config"). Read by FsmnVADStreaming.inference from the
    # merged AutoModel kwargs; a fixed 800 ms end silence instead of funasr 1.4.16's dynamic schedule.
    "dynamic_silence": False,
}

# The chosen VAD path (module docstring, "The VAD's weights"). Log-mel values are in nats.
VAD_MVN_MEAN = 12.0  # am.mvn: shift -12, rescale 1/4 on every dimension
VAD_MVN_STD = 4.0
VAD_LOW_BINS = 40  # mel bins 0..39 (0-1.9 kHz), where voiced speech carries its energy
VAD_FLOOR = 15.0  # per-bin log-mel floor: -40 dBFS white noise stays below it in these bins
VAD_EXCESS_CAP = 2.0  # the smoothed excess is capped so that the logit, hence P(silence), stays bounded
VAD_SPEECH_AT = 0.45  # smoothed excess where P(silence) = 0.2, FunASR's speech boundary (speech_noise_thres 0.6)
VAD_SLOPE = 10.0  # logit units per nat of excess
VAD_THRESHOLD = VAD_SPEECH_AT - math.log(4.0) / VAD_SLOPE  # P(silence) = 0.5 here (0.311)


def vad_silence_probability(excess: float) -> float:
    """P(silence) the VAD gives a frame whose smoothed low-band log-mel excess over the floor is ``excess``."""
    capped = min(max(excess, 0.0), VAD_EXCESS_CAP)
    return 1.0 / (1.0 + math.exp(-VAD_SLOPE * (VAD_THRESHOLD - capped)))


def build_vad(out_dir: Path) -> None:
    conf = copy.deepcopy(_VAD_CONFIG)
    write_config(out_dir / "config.yaml", conf)
    write_am_mvn(
        out_dir / "am.mvn",
        np.full(VAD_FEAT_DIM, -VAD_MVN_MEAN),
        np.full(VAD_FEAT_DIM, 1.0 / VAD_MVN_STD),
    )
    model = instantiate(conf, vocab_size=-1, seed=0, input_size=VAD_FEAT_DIM)
    _choose_vad_weights(model, conf["encoder_conf"])
    save_weights(out_dir / "model.pt", model)


def _choose_vad_weights(model: Any, enc: dict[str, Any]) -> None:
    import torch

    fsmn = model.encoder
    with torch.no_grad():
        for param in fsmn.parameters():
            param.zero_()
        # in_linear1 unit b (b < 40): the CMVN'd log-mel of mel bin b, averaged over the 5 stacked frames.
        w1 = fsmn.in_linear1.linear.weight  # (140, 400)
        for b in range(VAD_LOW_BINS):
            for frame in range(VAD_LFR_M):
                w1[b, frame * N_MELS + b] = 1.0 / VAD_LFR_M
        # in_linear2 + ReLU: back to nats (4 * x + 12), minus the floor: relu(logmel_b - 15).
        w2, b2 = fsmn.in_linear2.linear.weight, fsmn.in_linear2.linear.bias  # (250, 140)
        for b in range(VAD_LOW_BINS):
            w2[b, b] = VAD_MVN_STD
            b2[b] = VAD_MVN_MEAN - VAD_FLOOR
        # FSMN block 0: its projection averages the 40 excesses into S; its memory (out = x + taps * last 20
        # frames) turns S into M, S's mean over the last 20 frames (200 ms: the current-frame tap cancels the
        # identity); its affine + ReLU gives the two units M and relu(M - 2).
        first = fsmn.fsmn[0]
        first.linear.linear.weight[0, :VAD_LOW_BINS] = 1.0 / VAD_LOW_BINS  # (128, 250)
        lorder = enc["lorder"]
        taps = first.fsmn_block.conv_left.weight  # (128, 1, 20, 1); tap lorder-1 is the current frame
        taps[0, 0, :, 0] = 1.0 / lorder
        taps[0, 0, lorder - 1, 0] = 1.0 / lorder - 1.0
        first.affine.linear.weight[0, 0] = 1.0  # (250, 128)
        first.affine.linear.weight[1, 0] = 1.0
        first.affine.linear.bias[1] = -VAD_EXCESS_CAP
        # Blocks 1-3: identity on units 0 and 1.
        for block in list(fsmn.fsmn)[1:]:
            for unit in (0, 1):
                block.linear.linear.weight[unit, unit] = 1.0
                block.affine.linear.weight[unit, unit] = 1.0
        # out_linear1 unit 0 = M - relu(M - 2) = min(M, 2).
        w5 = fsmn.out_linear1.linear.weight  # (140, 250)
        w5[0, 0], w5[0, 1] = 1.0, -1.0
        # out_linear2: the silence logit; the other 247 logits stay 0, so ln(247) makes P(silence) a sigmoid.
        w6, b6 = fsmn.out_linear2.linear.weight, fsmn.out_linear2.linear.bias  # (248, 140)
        w6[0, 0] = -VAD_SLOPE
        b6[0] = VAD_SLOPE * VAD_THRESHOLD + math.log(enc["output_dim"] - 1)


# ------------------------------------------------------------------------------------------ SeACo-Paraformer

# The real paraformer-zh config.yaml (iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch).
_OFFLINE_LARGE_CONFIG: dict[str, Any] = {
    "model": "SeacoParaformer",
    "model_conf": {
        "ctc_weight": 0.0,  # no CTC head (Paraformer builds none when 0)
        "lsm_weight": 0.1,
        "length_normalized_loss": True,
        "predictor_weight": 1.0,
        "predictor_bias": 1,
        "sampling_ratio": 0.75,
        "inner_dim": 512,  # the bias encoder reads decoder.embed, so it must equal the decoder's width
        "bias_encoder_type": "lstm",
        "bias_encoder_bid": False,
        "seaco_lsm_weight": 0.1,
        "seaco_length_normalized_loss": True,
        "train_decoder": True,
        "NO_BIAS": 8377,  # the bias head's "no hotword here" class (SeacoParaformer's default, the real value)
    },
    "encoder": "SANMEncoder",
    "encoder_conf": {
        "output_size": 512,
        "attention_heads": 4,
        "linear_units": 2048,
        "num_blocks": 50,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.1,
        "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": 11,
        "sanm_shfit": 0,
        "selfattention_layer_type": "sanm",
    },
    "decoder": "ParaformerSANMDecoder",
    "decoder_conf": {
        "attention_heads": 4,
        "linear_units": 2048,
        "num_blocks": 16,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
        "att_layer_num": 16,
        "kernel_size": 11,
        "sanm_shfit": 0,
    },
    # The SeACo bias decoder: attends from the CIF embeddings / decoder states to the hotword embeddings.
    "seaco_decoder": "ParaformerSANMDecoder",
    "seaco_decoder_conf": {
        "attention_heads": 4,
        "linear_units": 1024,
        "num_blocks": 4,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "self_attention_dropout_rate": 0.1,
        "src_attention_dropout_rate": 0.1,
        "kernel_size": 21,
        "sanm_shfit": 0,
        "use_output_layer": False,
        "wo_input_layer": True,
    },
    "predictor": "CifPredictorV3",  # V3 = CIF plus the upsampled second CIF that gives timestamps
    "predictor_conf": {
        "idim": 512,
        "threshold": 1.0,
        "l_order": 1,
        "r_order": 1,
        "tail_threshold": 0.45,
        "smooth_factor2": 0.25,
        "noise_threshold2": 0.01,
        "upsample_times": 3,
        "use_cif1_cnn": False,
        "upsample_type": "cnn_blstm",
    },
    "frontend": "WavFrontend",
    "frontend_conf": {
        "fs": 16000,
        "window": "hamming",
        "n_mels": N_MELS,
        "frame_length": 25,
        "frame_shift": 10,
        "lfr_m": LFR_M,
        "lfr_n": LFR_N,
        "dither": 0.0,  # deterministic features (see factory.py's streaming config)
    },
    "specaug": None,
    "normalize": None,
    "tokenizer": "CharTokenizer",
    "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
}

_OFFLINE_VOCAB: dict[str, int] = {"offline-tiny-random": 64, "offline-large-random": 8404}


def offline_config(kind: str) -> dict[str, Any]:
    conf = copy.deepcopy(_OFFLINE_LARGE_CONFIG)
    if kind == "offline-tiny-random":
        # tiny-random's sizes (factory.py): 128 wide, 4 encoder blocks, 2 decoder blocks, 64 tokens.
        conf["model_conf"].update(inner_dim=128, NO_BIAS=_OFFLINE_VOCAB[kind] - 2)  # a real token id, not <unk>
        conf["encoder_conf"].update(output_size=128, linear_units=256, num_blocks=4)
        conf["decoder_conf"].update(linear_units=256, num_blocks=2, att_layer_num=2)
        conf["seaco_decoder_conf"].update(linear_units=256, num_blocks=1)
        conf["predictor_conf"].update(idim=128)
    return conf


def offline_tokens(kind: str) -> list[str]:
    """The streaming models' layout (``factory.token_list``): ``<blank> <s> </s>``, CJK from U+4E00, ``<unk>``."""
    n_chars = _OFFLINE_VOCAB[kind] - 4
    return ["<blank>", "<s>", "</s>"] + [chr(0x4E00 + i) for i in range(n_chars)] + ["<unk>"]


def build_offline(kind: str, out_dir: Path, seed: int) -> None:
    conf = offline_config(kind)
    tokens = offline_tokens(kind)
    write_config(out_dir / "config.yaml", conf)
    write_tokens(out_dir / "tokens.json", tokens)
    random_am_mvn(out_dir / "am.mvn", seed)
    # seg_dict: "word piece ..." per line. The real one maps words to characters / BPE pieces; here every
    # character maps to itself, so that a hotword of these characters splits into its tokens.
    lines = [f"{tok} {tok}" for tok in tokens if len(tok) == 1]
    (out_dir / "seg_dict").write_text("\n".join(lines) + "\n", encoding="utf-8")
    save_weights(out_dir / "model.pt", instantiate(conf, len(tokens), seed, input_size=FEAT_DIM))


# -------------------------------------------------------------------------------------------- CT-Transformer

PUNC_LIST: list[str] = ["<unk>", "_", "，", "。", "？", "、"]

# The real vad_realtime config.yaml (iic/punc_ct-transformer_zh-cn-common-vad_realtime-vocab272727).
_PUNC_LARGE_CONFIG: dict[str, Any] = {
    "model": "CTTransformerStreaming",
    "model_conf": {
        "ignore_id": 0,
        "embed_unit": 256,
        "att_unit": 256,
        "dropout_rate": 0.1,
        "punc_list": PUNC_LIST,
        "punc_weight": [1.0] * len(PUNC_LIST),
        "sentence_end_id": 3,  # "。"
    },
    "encoder": "SANMVadEncoder",
    "encoder_conf": {
        "input_size": 256,
        "output_size": 256,
        "attention_heads": 8,
        "linear_units": 1024,
        "num_blocks": 3,
        "dropout_rate": 0.1,
        "positional_dropout_rate": 0.1,
        "attention_dropout_rate": 0.0,
        "input_layer": "pe",
        "pos_enc_class": "SinusoidalPositionEncoder",
        "normalize_before": True,
        "kernel_size": 11,
        "sanm_shfit": 5,
        "selfattention_layer_type": "sanm",
        "padding_idx": 0,
    },
    "tokenizer": "CharTokenizer",
    "tokenizer_conf": {"unk_symbol": "<unk>"},
}

# tiny: <blank> <s> </s>, tiny-random's 60 characters, the 4 marks, <unk>.
_PUNC_VOCAB: dict[str, int] = {"punc-tiny-random": 68, "punc-large-random": 272727}


def punc_config(kind: str) -> dict[str, Any]:
    conf = copy.deepcopy(_PUNC_LARGE_CONFIG)
    if kind == "punc-tiny-random":
        conf["model_conf"].update(embed_unit=64, att_unit=64)
        conf["encoder_conf"].update(input_size=64, output_size=64, attention_heads=4, linear_units=128, num_blocks=2)
    return conf


def punc_tokens(kind: str) -> list[str]:
    """``<blank> <s> </s>``, the ASR models' CJK characters, the punctuation marks, words, ``<unk>`` last.

    The tiny list holds the same 60 characters as ``tiny-random``'s (U+4E00...) and the marks. The large one starts
    with large-random's 8400 characters and the marks, then fills the real size (272727; the real vocabulary is
    mostly jieba words) with two-character words made of those characters, in a fixed order.
    """
    size = _PUNC_VOCAB[kind]
    n_chars = (64 if kind == "punc-tiny-random" else 8404) - 4
    chars = [chr(0x4E00 + i) for i in range(n_chars)]
    tokens = ["<blank>", "<s>", "</s>", *chars, *(p for p in PUNC_LIST if len(p) == 1 and p != "_")]
    n_words = size - len(tokens) - 1
    tokens += [chars[i // n_chars] + chars[i % n_chars] for i in range(n_words)]
    return tokens + ["<unk>"]


def build_punc(kind: str, out_dir: Path, seed: int) -> None:
    import torch

    conf = punc_config(kind)
    tokens = punc_tokens(kind)
    write_config(out_dir / "config.yaml", conf)
    write_tokens(out_dir / "tokens.json", tokens)
    model = instantiate(conf, len(tokens), seed, input_size=None)
    # Class 0 of punc_list is "<unk>", the padding label (ignore_id 0) a trained model never predicts. Random
    # weights do predict it, and CTTransformerStreaming then writes the literal text "<unk>" after each such word
    # ("一<unk>丁<unk>七<unk>..."; it drops only "_", and its trailing-mark strip misses "<unk>" because it tests
    # the last CHARACTER, ">"); with no "。"/"？" predicted, cache["pre_text"] is never cut either. A strongly
    # negative bias on that class gives the trained model's behaviour.
    with torch.no_grad():
        model.decoder.bias[0] = -30.0
    save_weights(out_dir / "model.pt", model)


# ------------------------------------------------------------------------------------------------- dispatch


def model_files_2pass(kind: str) -> tuple[str, ...]:
    if kind == VAD_KIND:
        return ("config.yaml", "model.pt", "am.mvn")
    if kind in OFFLINE_KINDS:
        return ("config.yaml", "model.pt", "tokens.json", "am.mvn", "seg_dict")
    return ("config.yaml", "model.pt", "tokens.json")


def config_2pass(kind: str) -> dict[str, Any]:
    if kind == VAD_KIND:
        return copy.deepcopy(_VAD_CONFIG)
    if kind in OFFLINE_KINDS:
        return offline_config(kind)
    return punc_config(kind)


def build_2pass(kind: str, out_dir: Path, seed: int) -> None:
    if kind == VAD_KIND:
        build_vad(out_dir)
    elif kind in OFFLINE_KINDS:
        build_offline(kind, out_dir, seed)
    else:
        build_punc(kind, out_dir, seed)
