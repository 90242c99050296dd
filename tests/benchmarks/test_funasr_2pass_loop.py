"""benchmarks.funasr_2pass_loop: FunASR's classic 2pass server loop, run in-process as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.audio import sentence_bounds, synth_sentences, synth_speechlike
from benchmarks.funasr_2pass_loop import FRAME_BYTES, Sentence, frames_of, reference_2pass
from engine.model.loading import load_automodel

SENTENCES_S = [2.0, 3.0, 1.5, 2.5]
SEED = 1  # with the vad kind's weights, this clip's VAD segments are exactly its four sentences
FRAME = FRAME_BYTES // 2


@pytest.fixture(scope="module")
def vad(vad_model: Path) -> Any:
    return load_automodel(str(vad_model), role="vad")


@pytest.fixture(scope="module")
def offline(offline_tiny_model: Path) -> Any:
    return load_automodel(str(offline_tiny_model), role="offline")


@pytest.fixture(scope="module")
def punc(punc_tiny_model: Path) -> Any:
    return load_automodel(str(punc_tiny_model), role="punc")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synth_sentences(SENTENCES_S, seed=SEED)


@pytest.fixture(scope="module")
def reference(vad: Any, offline: Any, punc: Any, clip: np.ndarray) -> Any:
    return reference_2pass(vad, offline, punc, clip)


def to_float(pcm: np.ndarray) -> np.ndarray:
    result: np.ndarray = pcm.astype(np.float32) / 32768
    return result


def test_canonical_framing() -> None:
    pcm = np.arange(3 * FRAME + 123, dtype=np.int16)
    frames = frames_of(pcm)
    assert [len(f) for f in frames] == [FRAME_BYTES] * 3 + [246]
    assert b"".join(frames) == pcm.tobytes()
    assert frames_of(np.zeros(0, dtype=np.int16)) == []


def test_one_sentence_per_spoken_sentence(reference: Any, clip: np.ndarray) -> None:
    assert reference.aborted is None
    assert len(reference.sentences) == len(SENTENCES_S)
    for sentence, (start_s, end_s) in zip(reference.sentences, sentence_bounds(SENTENCES_S)):
        # The VAD's start looks back 200 ms before the first syllable (20-150 ms after the nominal start); its end
        # comes 100 ms after the last one.
        assert start_s * 1000 - 400 <= sentence.start_ms <= start_s * 1000 + 200, sentence
        assert end_s * 1000 - 600 <= sentence.end_ms <= end_s * 1000 + 300, sentence
        # The buffer: from the pre-roll to the frame that reported the end. beg_bias floors, so the pre-roll starts
        # at the first frame boundary at or after the VAD's start.
        assert sentence.audio_start % FRAME == 0
        assert sentence.audio_start - FRAME < sentence.start_ms * 16 <= sentence.audio_start
        assert sentence.end_ms * 16 < sentence.audio_end <= len(clip)
        assert sentence.tokens and sentence.raw_text and sentence.text
        assert all(0 <= a <= b <= (sentence.audio_end - sentence.audio_start) / 16 + 60 for a, b in sentence.timestamps)
    assert [s.index for s in reference.sentences] == list(range(len(SENTENCES_S)))
    # The end of audio finds the buffer empty (the last sentence ended in the trailing pause): nothing is decoded.
    assert [(k.reason, k.decoded, k.end_ms) for k in reference.skipped] == [("empty buffer", False, -1)]


def test_sentences_are_funasrs_own_calls(offline: Any, punc: Any, reference: Any, clip: np.ndarray) -> None:
    """Each sentence is generate() on its buffer, punctuated with the connection's one cache, in order."""
    cache: dict[str, Any] = {}
    for sentence in reference.sentences:
        result = offline.generate(input=to_float(clip[sentence.audio_start : sentence.audio_end]))[0]
        assert sentence.raw_text == result["text"]
        assert [list(t) for t in sentence.timestamps] == result["timestamp"]
        assert sentence.raw_text == " ".join(sentence.tokens)  # all CJK: FunASR spaces them when timestamping
        assert sentence.text == punc.generate(input=result["text"], cache=cache)[0]["text"]


def test_deterministic(vad: Any, offline: Any, punc: Any, reference: Any, clip: np.ndarray) -> None:
    assert reference_2pass(vad, offline, punc, clip) == reference


def test_without_punctuation(vad: Any, offline: Any, reference: Any, clip: np.ndarray) -> None:
    bare = reference_2pass(vad, offline, None, clip)
    assert [s.text for s in bare.sentences] == [s.raw_text for s in reference.sentences]
    assert [s.tokens for s in bare.sentences] == [s.tokens for s in reference.sentences]


def test_hotwords_reach_every_offline_call(vad: Any, offline: Any, clip: np.ndarray, reference: Any) -> None:
    hot = reference_2pass(vad, offline, None, clip, hotwords="丁七 丱个丁")
    assert [(s.audio_start, s.audio_end) for s in hot.sentences] == [(s.audio_start, s.audio_end) for s in reference.sentences]
    for sentence in hot.sentences:
        audio = to_float(clip[sentence.audio_start : sentence.audio_end])
        assert sentence.raw_text == offline.generate(input=audio, hotword="丁七 丱个丁")[0]["text"]
    assert [s.raw_text for s in hot.sentences] != [s.raw_text for s in reference.sentences]


def test_bytes_input_equals_float_input_where_funasr_reads_pcm_as_pcm(vad: Any, offline: Any, punc: Any) -> None:
    from funasr.utils.load_utils import _is_audio_container

    pcm = synth_sentences([2.0, 1.5], seed=0)
    assert not any(_is_audio_container(frame) for frame in frames_of(pcm))
    assert reference_2pass(vad, offline, punc, pcm, input_mode="bytes") == reference_2pass(vad, offline, punc, pcm)


def test_funasr_takes_a_near_silent_pcm_frame_for_mp3(vad: Any, offline: Any, clip: np.ndarray, reference: Any) -> None:
    """funasr 1.4.16's load_bytes: this clip's frame 162 starts with sample -1 (ff ff) and parses as MPEG frames, so
    generate(input=bytes) raises. The bytes mode loses that frame like the server (the VAD's clock falls 60 ms
    behind), which moves the later boundaries; the float mode is unaffected."""
    from funasr.utils.load_utils import _is_audio_container

    sniffed = [i for i, frame in enumerate(frames_of(clip)) if _is_audio_container(frame)]
    if not sniffed:
        pytest.skip("this FunASR no longer mistakes raw PCM for a container")
    as_bytes = reference_2pass(vad, offline, None, clip, input_mode="bytes")
    assert as_bytes.aborted is None
    first_late = min(k for k, (i, _) in enumerate(reference.vad_results) if i > sniffed[0])
    assert as_bytes.vad_results[:first_late] == reference.vad_results[:first_late]
    assert as_bytes.vad_results != reference.vad_results


class ScriptedVad:
    """A stand-in VAD AutoModel: generate() returns the scripted value for each frame (default: nothing)."""

    def __init__(self, script: dict[int, list[list[int]]]) -> None:
        self.script = script
        self.calls = 0

    def generate(self, input: Any, cache: dict[str, Any], is_final: bool, chunk_size: int) -> list[dict[str, Any]]:
        assert is_final is False and chunk_size == 60
        value = self.script.get(self.calls, [])
        self.calls += 1
        return [{"key": "x", "value": value}]


def run_script(offline: Any, script: dict[int, list[list[int]]], n_frames: int, tail: int = 0) -> Any:
    pcm = synth_speechlike((n_frames * FRAME + tail) / 16000, seed=7)[: n_frames * FRAME + tail]
    return reference_2pass(ScriptedVad(script), offline, None, pcm)


def ranges(result: Any) -> list[tuple[int, int, int, int]]:
    return [(s.start_ms, s.end_ms, s.audio_start // FRAME, s.audio_end // FRAME) for s in result.sentences]


def test_pre_roll_and_the_one_segment_rule(offline: Any) -> None:
    result = run_script(
        offline,
        {
            3: [[60, -1]],  # vad_pre_idx 240: beg_bias (240 - 60) // 60 = 3 -> frames 1..3
            10: [[-1, 600]],  # decode frames 1..10
            12: [[700, -1], [-1, 800]],  # two segments: ignored
            14: [[830, -1]],  # vad_pre_idx 900: beg_bias 1 -> frame 14 alone, then 15..19 appended
        },
        n_frames=20,
    )
    assert ranges(result) == [(60, 600, 1, 11), (830, -1, 14, 20)]
    assert len(result.vad_results) == 4  # the ignored one is kept for inspection


def test_a_start_inside_the_current_frame_takes_every_frame_kept(offline: Any) -> None:
    """beg_bias 0 -> Python's frames[-0:] is the whole list: the classic server's buffer reaches back to the start
    of the audio (before any sentence end) or over the 20 frames kept after one."""
    result = run_script(offline, {5: [[330, -1]], 12: [[-1, 700]], 40: [[2430, -1]], 45: [[-1, 2700]]}, n_frames=50)
    # Frame 5: vad_pre_idx 360, beg_bias 30 // 60 = 0 -> frames 0..5; the end at frame 12 decodes frames 0..12.
    assert ranges(result)[0] == (330, 700, 0, 13)
    # frames[-20:] keeps all 13; frames only grows until the next end, so at frame 40 (beg_bias 0 again) it holds
    # frames 0..40: the second sentence's buffer starts at the start of the audio.
    assert ranges(result)[1] == (2430, 2700, 0, 46)


def test_frames_are_trimmed_to_twenty_after_an_end(offline: Any) -> None:
    result = run_script(offline, {30: [[1800, -1]], 35: [[-1, 2100]], 36: [[0, -1]], 45: [[-1, 2700]]}, n_frames=50)
    # At frame 36: frames = frames 16..35 (kept) + 36; beg_bias (37 * 60 - 0) // 60 = 37 > 21: all 21 frames.
    assert ranges(result)[1] == (0, 2700, 16, 46)


def test_too_short_a_buffer_is_swallowed_like_the_server(offline: Any) -> None:
    """A 100-sample last frame holding a start: the end of audio decodes 100 samples, FunASR raises, the server's
    except swallows it; 40 ms or so decodes to [] and the server's [0] raises IndexError, swallowed too."""
    result = run_script(offline, {10: [[600, -1]]}, n_frames=10, tail=100)  # beg_bias (606 - 600) // 6 = 1
    assert result.sentences == ()
    (skipped,) = result.skipped
    assert skipped.decoded and skipped.reason.startswith("error: ") and skipped.end_ms == -1
    assert (skipped.audio_start, skipped.audio_end) == (10 * FRAME, 10 * FRAME + 100)
    result = run_script(offline, {10: [[600, 640]]}, n_frames=12)  # start and end in one result: one frame
    (skipped,) = result.skipped[:1]
    assert skipped.decoded and "IndexError" in skipped.reason and (skipped.audio_start, skipped.audio_end) == (
        10 * FRAME,
        11 * FRAME,
    )


def test_an_end_without_a_start_decodes_nothing(offline: Any) -> None:
    result = run_script(offline, {4: [[100, -1], [-1, 200]], 8: [[-1, 400]]}, n_frames=10)
    assert result.sentences == ()
    assert [(k.reason, k.decoded, k.end_ms) for k in result.skipped] == [("empty buffer", False, 400)] + [
        ("empty buffer", False, -1)
    ]


def test_sentence_fields(reference: Any) -> None:
    sentence = reference.sentences[0]
    assert isinstance(sentence, Sentence)
    with pytest.raises(AttributeError):
        sentence.text = "x"  # type: ignore[misc]
