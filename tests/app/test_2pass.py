"""2pass and offline sessions end to end: served sentences equal FunASR's own 2pass loop (benchmarks/funasr_2pass_loop.py,
its classic server's `ws_serve` on the same 60 ms frames), and a crash or a move mid-sentence changes nothing.

The models are tiny random-weight ones (so the texts are gibberish; what is checked is that they are FunASR's). With
PARASTREAM_TEST_MODEL=large-random the same tests run on the real architectures (recorded in docs/pipeline.md).
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.client import ParastreamClient, TranscriptEvent
from benchmarks.audio import synth_sentences
from benchmarks.funasr_2pass_loop import Sentence, TwoPassReference, reference_2pass
from tests.app.conftest import LARGE, MAX_SENTENCE_S
from tests.harness import ServiceProcess, wait_for
from tests.helpers import collect, session_info, stream_in_pieces, until
from tests.reference_cache import reference_tokens


@functools.lru_cache(maxsize=8)
def _automodel(path: str, role: str, max_sentence_ms: int | None = None) -> Any:
    from engine.model.loading import load_automodel
    from engine.model.vad import set_max_sentence_ms

    model = load_automodel(path, role=role)
    if max_sentence_ms is not None:
        set_max_sentence_ms(model, max_sentence_ms)
    return model


def reference(
    twopass_models: dict[str, Path], pcm: np.ndarray, hotwords: str = "", max_sentence_ms: int = MAX_SENTENCE_S * 1000
) -> TwoPassReference:
    return reference_2pass(
        _automodel(str(twopass_models["vad"]), "vad", max_sentence_ms),
        _automodel(str(twopass_models["offline"]), "offline"),
        _automodel(str(twopass_models["punc"]), "punc"),
        pcm,
        hotwords,
    )


def served(events: list[TranscriptEvent]) -> list[dict[str, Any]]:
    return [e.data for e in events if e.type == "sentence"]


def assert_sentences_equal(events: list[TranscriptEvent], ref: TwoPassReference, pcm: np.ndarray) -> None:
    """Text, tokens, boundaries and timestamps of every sentence, in order; the final joins them."""
    got = served(events)

    def expected(s: Sentence) -> dict[str, Any]:
        offset_ms = s.audio_start // 16
        return {
            "index": s.index,
            "text": s.text,
            "tokens": list(s.tokens),
            "start_ms": s.start_ms,
            "end_ms": len(pcm) // 16 if s.end_ms == -1 else s.end_ms,
            "timestamps": [[offset_ms + a, offset_ms + b] for a, b in s.timestamps],
            "audio_start_ms": offset_ms,
            "audio_end_ms": s.audio_end // 16,
        }

    assert got == [expected(s) for s in ref.sentences]
    assert events[-1].type == "final", events[-1]
    assert events[-1].data["text"] == ref.text
    assert events[-1].data["tokens"] == [t for s in ref.sentences for t in s.tokens]
    assert [e.id for e in events] == list(range(1, len(events) + 1))


def clip(i: int) -> np.ndarray:
    rng = random.Random(i)
    return synth_sentences([round(rng.uniform(1.0, 3.5), 2) for _ in range(rng.randint(2, 4))], seed=20 + i)


def test_concurrent_2pass_sessions_equal_funasr(twopass_service: ServiceProcess, twopass_models: dict[str, Path]) -> None:
    """8 sessions at once in random splits: 2pass ones (two with hotwords, in both client forms) and an offline one.
    Sentences equal FunASR's 2pass loop; 2pass partials are online mode's (FunASR's loop on the streaming model)."""
    hotwords = {2: ("一丁 七", "一丁 七"), 5: ('{"丁七": 20, "丂": 5}', "丁七 丂")}
    modes = {6: "offline"}
    clips = [clip(i) for i in range(8)]

    async def run() -> list[list[TranscriptEvent]]:
        async with ParastreamClient(twopass_service.base_url) as client:
            sessions = []
            for i in range(len(clips)):
                options: dict[str, Any] = {"mode": modes.get(i, "2pass")}
                if i in hotwords:
                    options["hotwords"] = hotwords[i][0]
                sessions.append((await client.create_session(**options))["id"])
            watchers = [asyncio.create_task(collect(client, sid)) for sid in sessions]
            await asyncio.gather(
                *(
                    stream_in_pieces(client, sid, pcm, random.Random(i), max_piece=24_000, jitter_s=0.02)
                    for i, (sid, pcm) in enumerate(zip(sessions, clips))
                )
            )
            return await asyncio.wait_for(asyncio.gather(*watchers), 300 if LARGE else 120)

    results = asyncio.run(run())
    for i, (events, pcm) in enumerate(zip(results, clips)):
        ref = reference(twopass_models, pcm, hotwords.get(i, ("", ""))[1])
        assert len(ref.sentences) >= 2, i  # the clips really have several sentences
        assert_sentences_equal(events, ref, pcm)
        partials = [t for e in events if e.type == "partial" for t in e.data["tokens"]]
        if modes.get(i) == "offline":
            assert partials == []
        else:  # every stride's tokens as in online mode; the 2pass close skips the final step, as FunASR's does
            online = reference_tokens(twopass_models["model"], pcm)
            assert partials and online[: len(partials)] == partials, i


def test_mode_needs_the_sentence_models(service: ServiceProcess) -> None:
    async def run() -> list[Any]:
        async with ParastreamClient(service.base_url) as client:
            answers = [await client.http.post("/v1/sessions", json={"mode": m}) for m in ("2pass", "offline")]
            online = await client.http.post("/v1/sessions", json={})
            await client.http.delete(f"/v1/sessions/{online.json()['id']}")
            return [*answers, online]

    two_pass, offline, default = asyncio.run(run())
    for answer in (two_pass, offline):
        assert answer.status_code == 422
        assert "PARASTREAM_VAD_MODEL" in answer.json()["error"]["message"]
    assert default.status_code == 201 and default.json()["mode"] == "online"


def test_bad_hotwords_are_refused(twopass_service: ServiceProcess) -> None:
    async def run() -> Any:
        async with ParastreamClient(twopass_service.base_url) as client:
            return await client.http.post("/v1/sessions", json={"hotwords": '{"unclosed": 1'})

    answer = asyncio.run(run())
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "invalid_options"


@pytest.mark.parametrize("how", ["sigkill", "migrate"])
def test_crash_or_move_mid_sentence_changes_nothing(
    twopass_service: ServiceProcess, twopass_models: dict[str, Path], how: str
) -> None:
    """Pairs of sessions stream the same clips; once each session of one worker is inside a sentence, that worker is
    SIGKILLed (or its sessions are moved). Every session's events, ids included, equal its twin's and FunASR's."""
    svc = twopass_service
    clips = [clip(100 + i) for i in range(3)]

    async def mid_sentence(client: ParastreamClient, sid: str) -> bool:
        info = await session_info(client, sid)
        return info["samples_processed"] > 16000 * 2 and info["state"] == "open"

    async def run() -> tuple[list[list[TranscriptEvent]], list[str]]:
        async with ParastreamClient(svc.base_url) as client:
            sessions = [(await client.create_session(mode="2pass"))["id"] for _ in range(2 * len(clips))]
            watchers = [asyncio.create_task(collect(client, sid)) for sid in sessions]
            feeds = [
                asyncio.create_task(
                    stream_in_pieces(client, sid, clips[k % len(clips)], random.Random(k), max_piece=16_000, speed=2.0)
                )
                for k, sid in enumerate(sessions)
            ]
            for sid in sessions:
                await until(lambda sid=sid: mid_sentence(client, sid), 60, "sessions mid-stream")
            victims = [sid for sid in sessions if (await session_info(client, sid))["worker"] == 0]
            assert victims and len(victims) < len(sessions)
            if how == "sigkill":
                pid = (await asyncio.to_thread(svc.workers))[0]["pid"]
                os.kill(pid, signal.SIGKILL)
                await asyncio.to_thread(wait_for, lambda: svc.workers()[0]["pid"] != pid, 60)
            else:
                for sid in victims:
                    for _ in range(100):  # one move at a time per service: the balancer's may be under way
                        r = await client.http.post(f"/v1/sessions/{sid}/migrate", json={"worker": 1})
                        if r.status_code != 409 or r.json()["error"]["code"] != "migration_in_flight":
                            break
                        await asyncio.sleep(0.05)
                    assert r.status_code == 202, r.text
            await asyncio.gather(*feeds)
            results = await asyncio.wait_for(asyncio.gather(*watchers), 300 if LARGE else 120)
            return results, victims

    results, victims = asyncio.run(run())
    events_of = dict(zip(range(len(results)), results))
    for k in range(len(clips)):
        a, b = events_of[k], events_of[k + len(clips)]
        assert [(e.id, e.type, e.data) for e in a] == [(e.id, e.type, e.data) for e in b], k
        assert_sentences_equal(a, reference(twopass_models, clips[k]), clips[k])
    assert victims


def test_a_sentence_longer_than_the_limit_is_cut_there(twopass_service: ServiceProcess, twopass_models: dict[str, Path]) -> None:
    """PARASTREAM_MAX_SENTENCE_S=3: the VAD ends a sentence 3 s long and the next begins, as FunASR's VAD does with
    max_single_segment_time 3000; the served sentences equal that reference."""
    pcm = synth_sentences([9.0, 1.5], pause_s=1.2, seed=3)

    async def run() -> list[TranscriptEvent]:
        async with ParastreamClient(twopass_service.base_url) as client:
            sid = (await client.create_session(mode="offline"))["id"]
            watcher = asyncio.create_task(collect(client, sid))
            await stream_in_pieces(client, sid, pcm, random.Random(0), max_piece=16_000)
            return await asyncio.wait_for(watcher, 120)

    events = asyncio.run(run())
    assert_sentences_equal(events, reference(twopass_models, pcm), pcm)
    lengths = [s["end_ms"] - s["start_ms"] for s in served(events)]
    assert len(lengths) >= 3 and max(lengths) <= MAX_SENTENCE_S * 1000 + 60  # cut at the first frame past the limit
