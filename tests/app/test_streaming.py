"""Served transcripts equal FunASR's own in-process loop, token for token, under concurrency and random splits."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np

from app.client import ParastreamClient, TranscriptEvent
from benchmarks import server_metrics
from benchmarks.common import cpu_model, git_commit
from engine.audio import Downsampler24k
from engine.settings import Settings
from tests.audio import synth_speechlike
from tests.harness import ServiceProcess
from tests.helpers import collect, session_info, stream_in_pieces, subscribed, until
from tests.reference_cache import reference_tokens

STRIDE = 9600
# Lengths chosen to hit every ending: exact stride multiples, a tail under 960 samples, tails over 960.
CLIP_SAMPLES = [8 * STRIDE, 5 * STRIDE + 500, 6 * STRIDE + 5000, 3 * STRIDE + 959, 7 * STRIDE + 961, 9 * STRIDE + 9599, 4 * STRIDE, 2 * STRIDE + 1234]


def test_eight_concurrent_sessions_match_the_in_process_reference(service: ServiceProcess, model_dir: Path) -> None:
    clips = [synth_speechlike(n / 16000, seed=100 + i) for i, n in enumerate(CLIP_SAMPLES)]

    async def run() -> tuple[list[list[TranscriptEvent]], list[int]]:
        async with ParastreamClient(service.base_url) as client:
            sessions = [await client.create_session() for _ in clips]
            watchers = [asyncio.create_task(collect(client, s["id"])) for s in sessions]
            # Pieces of 1 sample up to 2 s, a pause of up to 20 ms after each to interleave the sessions.
            await asyncio.gather(
                *(
                    stream_in_pieces(client, s["id"], clip, random.Random(i), max_piece=32_000, jitter_s=0.02)
                    for i, (s, clip) in enumerate(zip(sessions, clips))
                )
            )
            results = await asyncio.wait_for(asyncio.gather(*watchers), 120)
            return results, [s["worker"] for s in sessions]

    metrics_before, started = server_metrics.scrape(service.base_url), time.monotonic()
    results, workers = asyncio.run(run())
    served_s = time.monotonic() - started
    _maybe_record(model_dir, clips, results, workers, served_s, service.base_url, metrics_before)
    assert sorted(set(workers)) == [0, 1], "sessions should spread over both workers"
    for clip, events in zip(clips, results):
        final = events[-1]
        assert final.type == "final", events[-1]
        expected = reference_tokens(model_dir, clip)
        assert final.data["tokens"] == expected
        assert len(expected) > 0
        # The partials add up to the final, in order, and ids count up from 1 without gaps.
        partial_tokens = [t for e in events if e.type == "partial" for t in e.data["tokens"]]
        assert partial_tokens == expected
        assert [e.id for e in events] == list(range(1, len(events) + 1))


def test_resume_with_last_event_id_and_two_subscribers(service: ServiceProcess, model_dir: Path) -> None:
    clip = synth_speechlike(6.0, seed=7)

    async def run() -> tuple[list[TranscriptEvent], list[TranscriptEvent], list[TranscriptEvent], list[TranscriptEvent]]:
        async with ParastreamClient(service.base_url) as client:
            session = await client.create_session()
            sid = session["id"]
            first = asyncio.create_task(collect(client, sid))
            second = asyncio.create_task(collect(client, sid))
            # A third subscriber drops after its 2nd event, then reconnects with Last-Event-ID.
            dropped: list[TranscriptEvent] = []

            async def drop_after_two() -> None:
                async for event in client.events(sid):
                    dropped.append(event)
                    if len(dropped) == 2:
                        return

            dropper = asyncio.create_task(drop_after_two())
            for offset in range(0, len(clip), 4000):
                await client.append(sid, clip[offset : offset + 4000])
                await asyncio.sleep(0.01)
            await dropper
            resumed_live = asyncio.create_task(collect(client, sid, last_event_id=dropped[-1].id))
            await client.close(sid)
            a, b, resumed = await asyncio.wait_for(asyncio.gather(first, second, resumed_live), 60)
            # After the end, a resume still replays from the log.
            replay = await collect(client, sid, last_event_id=1)
            return a, b, dropped + resumed, replay

    a, b, reconnected, replay = asyncio.run(run())
    assert a == b  # two subscribers see the same events
    assert reconnected == a  # drop + resume misses nothing and repeats nothing
    assert replay == a[1:]
    assert a[-1].type == "final" and a[-1].data["tokens"] == reference_tokens(model_dir, clip)


def test_8khz_session_is_resampled(service: ServiceProcess) -> None:
    clip = synth_speechlike(3.0, seed=11, sample_rate=8000)

    async def run() -> tuple[dict, list[TranscriptEvent]]:
        async with ParastreamClient(service.base_url) as client:
            session = await client.create_session(sample_rate=8000)
            watcher = asyncio.create_task(collect(client, session["id"]))
            await client.append(session["id"], clip)
            await client.close(session["id"])
            events = await asyncio.wait_for(watcher, 60)
            info = await session_info(client, session["id"])
            return info, events

    info, events = asyncio.run(run())
    assert events[-1].type == "final" and events[-1].data["tokens"]
    assert info["samples_received"] == info["samples_processed"] == len(clip)


def test_24khz_session_hears_the_resampled_audio(service: ServiceProcess, model_dir: Path) -> None:
    """OpenAI's realtime audio rate: appended in odd pieces, transcribed as FunASR transcribes the 16 kHz audio the
    resampler makes of the whole clip at once."""
    clip = synth_speechlike(3.0, seed=12, sample_rate=24_000)

    async def run() -> tuple[dict, list[TranscriptEvent]]:
        async with ParastreamClient(service.base_url) as client:
            session = await client.create_session(sample_rate=24_000)
            watcher = asyncio.create_task(collect(client, session["id"]))
            for offset in range(0, len(clip), 7001):
                await client.append(session["id"], clip[offset : offset + 7001])
            await client.close(session["id"])
            events = await asyncio.wait_for(watcher, 60)
            return await session_info(client, session["id"]), events

    info, events = asyncio.run(run())
    assert events[-1].type == "final"
    assert events[-1].data["tokens"] == reference_tokens(model_dir, Downsampler24k().process(clip))
    assert info["samples_received"] == info["samples_processed"] == len(clip)


def _maybe_record(
    model_dir: Path,
    clips: list[np.ndarray],
    results: list[list[TranscriptEvent]],
    workers: list[int],
    served_s: float,
    base_url: str,
    metrics_before: dict[str, float] | None,
) -> None:
    """With PARASTREAM_EXACTNESS_REPORT=path, write what this run compared (for the large-random record)."""
    path = os.environ.get("PARASTREAM_EXACTNESS_REPORT")
    if not path:
        return
    sessions = []
    for clip, events, worker in zip(clips, results, workers):
        expected = reference_tokens(model_dir, clip)
        got = events[-1].data.get("tokens") if events[-1].type == "final" else None
        sessions.append({"samples": len(clip), "worker": worker, "reference_tokens": len(expected),
                         "served_tokens": len(got or []), "identical": got == expected})
    record = {
        "test": "test_eight_concurrent_sessions_match_the_in_process_reference",
        "model": model_dir.name, "workers": 2, "backend": Settings().resolved_backend(), "sessions": sessions,
        "all_identical": all(s["identical"] for s in sessions), "served_wall_s": round(served_s, 1),
        # How the strides were batched (the service's /metrics over this test; batching is on by default).
        "strides": server_metrics.trial_summary(metrics_before, server_metrics.scrape(base_url)),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "commit": git_commit(mark_dirty=False), "date": time.strftime("%Y-%m-%d"),
        "note": "random weights: the tokens are gibberish; this checks exactness, not accuracy",
    }
    Path(path).write_text(json.dumps(record, indent=2) + "\n")


def test_progress_subscribers_see_every_stride_and_the_same_ids(service: ServiceProcess) -> None:
    clip = synth_speechlike(4.0, seed=13)  # 6 full strides + a tail

    async def run() -> tuple[list[TranscriptEvent], list[TranscriptEvent]]:
        async with ParastreamClient(service.base_url) as client:
            sid = (await client.create_session())["id"]
            plain = asyncio.create_task(collect(client, sid))
            # Progress events are live only (never replayed): subscribe before the first audio.
            with_progress = await subscribed(client, sid, progress=True)
            for offset in range(0, len(clip), 9600):
                await client.append(sid, clip[offset : offset + 9600])
                await asyncio.sleep(0.05)
            await client.close(sid)
            return await asyncio.wait_for(plain, 30), await asyncio.wait_for(with_progress, 30)

    plain, verbose = asyncio.run(run())
    assert [e for e in verbose if e.type != "progress"] == plain  # same ids, same data
    processed = [e.data["samples_processed"] for e in verbose]
    assert processed == sorted(processed)  # never goes back
    for k in range(1, len(clip) // 9600 + 1):  # every stride boundary was reported by some event
        assert k * 9600 in processed
    assert processed[-1] == len(clip)


def test_keepalive_pings_are_not_events(service: ServiceProcess) -> None:
    """A stream idle longer than the ping interval (the service's is 0.2 s) gets keep-alive comments; clients must
    see no event for them."""

    async def run() -> list[TranscriptEvent]:
        async with ParastreamClient(service.base_url) as client:
            sid = (await client.create_session())["id"]
            events = asyncio.create_task(collect(client, sid))
            await client.append(sid, synth_speechlike(1.0, seed=3))
            await until(lambda: _processed(client, sid), 30, "the first stride")
            await asyncio.sleep(1.0)  # idle: several pings after the first partial
            await client.close(sid)
            return await asyncio.wait_for(events, 30)

    events = asyncio.run(run())
    assert [e.type for e in events][-1] == "final"
    assert all(e.type in ("partial", "final") for e in events)


async def _processed(client: ParastreamClient, sid: str) -> bool:
    return (await session_info(client, sid))["samples_processed"] > 0
