"""engine.model.offline: a decode equals FunASR's generate(); a batch equals decoding one by one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from funasr.utils.postprocess_utils import sentence_postprocess

from benchmarks.audio import synth_speechlike, to_float32
from benchmarks.funasr_2pass_loop import _capturing_ids2tokens
from engine.model.loading import ModelLoadError, load_automodel
from engine.model.offline import OfflineModel, OfflineResult

# Different lengths, one too short to featurize (200 samples), one with no predicted token (800 samples).
LENGTHS_S = [(5.0, 3), (0.05, 4), (2.3, 5), (0.2, 6), (3.7, 7), (1.0, 8), (0.0125, 9)]


@pytest.fixture(scope="module")
def automodel(offline_tiny_model: Path) -> Any:
    return load_automodel(str(offline_tiny_model), role="offline")


@pytest.fixture(scope="module")
def offline(offline_tiny_model: Path) -> OfflineModel:
    return OfflineModel.load(str(offline_tiny_model))


def audio(seconds: float, seed: int) -> np.ndarray:
    return to_float32(synth_speechlike(seconds, seed))


def generate(automodel: Any, samples: np.ndarray, hotwords: str = "") -> OfflineResult | None:
    """FunASR's own call, as the 2pass server makes it; None where it returns [] or raises."""
    tokens: list[list[str]] = []
    try:
        with _capturing_ids2tokens(automodel, tokens):
            results = automodel.generate(input=samples, **({"hotword": hotwords} if hotwords else {}))
    except Exception:
        return None
    if not results:
        return None
    stamps = tuple((int(a), int(b)) for a, b in results[0].get("timestamp", []))
    return OfflineResult(tuple(tokens[-1]), results[0]["text"], stamps)


def test_decode_equals_generate(automodel: Any, offline: OfflineModel) -> None:
    for seconds, seed in [(5.0, 3), (2.3, 5), (1.0, 8)]:
        samples = audio(seconds, seed)
        ours = offline.decode([samples], "")[0]
        theirs = generate(automodel, samples)
        assert theirs is not None and ours == theirs
        assert ours.tokens and ours.timestamps
        # With timestamps FunASR joins the words with spaces, CJK characters too ("个 丁 ..."); without, it does not.
        assert ours.text == " ".join(t for t in ours.tokens if t not in ("<s>", "</s>", "<unk>"))
        assert sentence_postprocess(list(ours.tokens))[0] == ours.text.replace(" ", "")
        assert all(0 <= a <= b <= seconds * 1000 + 100 for a, b in ours.timestamps)


def test_short_and_empty_audio_give_empty_results(automodel: Any, offline: OfflineModel) -> None:
    for n in (0, 1, 100, 256, 257, 400, 640, 800):
        samples = audio(0.1, 1)[:n].copy()
        ours = offline.decode([samples], "")
        assert len(ours) == 1 and ours[0].empty and ours[0] == OfflineResult()
        assert generate(automodel, samples) is None  # FunASR: [] (the server's [0] fails) or an exception
    assert offline.decode([], "") == []


def test_batch_equals_one_by_one(automodel: Any, offline: OfflineModel) -> None:
    audios = [audio(seconds, seed) for seconds, seed in LENGTHS_S]
    one_logprobs: list[Any] = []
    one: list[OfflineResult] = []
    for samples in audios:
        out: list[Any] = []
        one += offline.decode([samples], "", logprobs_out=out)
        one_logprobs += out
    batch_logprobs: list[Any] = []
    batch = offline.decode(audios, "", logprobs_out=batch_logprobs)

    worst = 0.0
    for i, (a, b, la, lb) in enumerate(zip(one, batch, one_logprobs, batch_logprobs)):
        assert (la is None) == (lb is None), i
        if la is None:
            assert a.empty and b.empty, i
            continue
        assert la.shape == lb.shape, i
        worst = max(worst, float((la - lb).abs().max()))
        top2 = torch.topk(la, 2, dim=-1).values
        sure = (top2[:, 0] - top2[:, 1]) > 1e-4
        ours_ids, theirs_ids = la.argmax(-1), lb.argmax(-1)
        assert torch.equal(ours_ids[sure], theirs_ids[sure]), i
        if bool(sure.all()):
            assert a == b, i  # tokens, text and timestamps
    assert worst < 1e-4
    print(f"\nbatched vs one by one: max |log-prob difference| {worst:.2e} over {len(audios)} audios")
    # ... and one by one is FunASR's own generate(), call for call.
    for samples, result in zip(audios, one):
        assert (generate(automodel, samples) or OfflineResult()) == result


def test_funasrs_own_batch_is_not_one_by_one(automodel: Any, offline: OfflineModel) -> None:
    """Why the adapter zero-pads the encoder output and computes timestamps per item: FunASR's batched inference
    lets padding reach the predictor's convolution and the timestamp BLSTM (documents the trap; if FunASR fixes it,
    this test says so)."""
    audios = [audio(seconds, seed) for seconds, seed in LENGTHS_S if seconds >= 0.05]
    theirs = automodel.generate(input=audios, batch_size=len(audios))
    ours = offline.decode(audios, "")
    differs = [t["text"] != o.text or [list(s) for s in o.timestamps] != t.get("timestamp", []) for t, o in zip(theirs, ours)]
    assert any(differs)


def test_hotwords_bias_and_equal_generate(automodel: Any, offline: OfflineModel) -> None:
    samples = audio(5.0, 3)
    hotwords = "丁七 丱个丁"
    ours = offline.decode([samples], hotwords)[0]
    # The SeACo bias path ran with the parsed list: each word's token ids, then <s>.
    hotword_list = offline.model.hotword_list
    assert hotword_list is not None and len(hotword_list) == 3 and hotword_list[-1] == [offline.model.sos]
    assert all(ids for ids in hotword_list)
    theirs = generate(automodel, samples, hotwords)
    assert theirs is not None and ours == theirs
    assert ours != offline.decode([samples], "")[0]  # the bias changes this random model's output


def test_hotword_batch_equals_one_by_one(automodel: Any, offline: OfflineModel) -> None:
    audios = [audio(seconds, seed) for seconds, seed in [(2.0, 11), (3.1, 12), (1.2, 13)]]
    batch = offline.decode(audios, "七七七 丁丁")
    for samples, result in zip(audios, batch):
        assert generate(automodel, samples, "七七七 丁丁") == result


def test_hotword_strings_are_never_urls_or_files(offline: OfflineModel, tmp_path: Path, monkeypatch: Any) -> None:
    """FunASR downloads a hotword string starting with http and reads one ending in .txt as a file (or else ignores
    it): the adapter's strings are words only."""
    import requests

    def no_network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("FunASR tried to download the hotwords")

    monkeypatch.setattr(requests, "get", no_network)
    samples = audio(1.0, 8)
    offline.decode([samples], "http://example.com/words.txt")
    assert offline.model.hotword_list is not None and len(offline.model.hotword_list) == 2
    words = tmp_path / "words.txt"
    words.write_text("丁丁\n七七\n个个\n", encoding="utf-8")
    offline.decode([samples], str(words))
    assert len(offline.model.hotword_list) == 2  # one word (the path) and <s>, not the file's three lines


def test_many_hotwords_decode_one_by_one(automodel: Any, offline: OfflineModel) -> None:
    """Past 49 words SeACo filters hotwords with the batch's first item's attention: each audio gets its own call."""
    chars = [t for t in offline.tokenizer.token_list if len(t) == 1]
    hotwords = " ".join(chars[i] + chars[(i * 7) % len(chars)] for i in range(55))
    audios = [audio(2.0, 21), audio(1.4, 22)]
    calls: list[int] = []
    inner = offline.model.inference

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(kwargs["data_in"]))
        return inner(*args, **kwargs)

    offline.model.inference = counting
    try:
        batch = offline.decode(audios, hotwords)
    finally:
        del offline.model.inference
    assert calls == [1, 1]
    for samples, result in zip(audios, batch):
        assert generate(automodel, samples, hotwords) == result


def test_no_override_outlives_a_call(offline: OfflineModel) -> None:
    offline.decode([audio(1.0, 8), audio(2.0, 9)], "丁七", logprobs_out=[])
    leftovers = {"encode", "calc_predictor_timestamp", "_seaco_decode_with_ASF", "inference"} & set(vars(offline.model))
    assert not leftovers
    assert "ids2tokens" not in vars(offline.tokenizer)


def test_rejects_int16_audio(offline: OfflineModel) -> None:
    with pytest.raises(TypeError):
        offline.decode([np.zeros(16000, dtype=np.int16)], "")


def test_load_errors_name_the_offline_setting(tmp_path: Path, vad_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="PARASTREAM_OFFLINE_MODEL"):
        OfflineModel.load(str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="PARASTREAM_OFFLINE_MODEL.*missing tokens.json"):
        OfflineModel.load(str(vad_model))
