"""Sessions moved between workers mid-stream, by the balancer and by the operator endpoint: no text changed."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import httpx

from app.client import ParastreamClient, TranscriptEvent
from tests.audio import synth_speechlike
from tests.harness import ServiceProcess, segments_of
from tests.helpers import assert_clean_log, collect, metric, session_info, stream_in_pieces, until
from tests.reference_cache import reference_tokens

MOVED = (0, 1, 2, 3)  # the sessions moved mid-stream in test_forced_migrations_mid_stream_change_nothing
HELD_BACK = 16_000  # the last second of each of those, sent only once their moves are done


def _migrated(base_url: str, reason: str) -> float:
    return metric(base_url, f'parastream_sessions_migrated_total{{reason="{reason}"}}')


def test_balancer_moves_a_session_when_one_worker_empties(model_dir: Path) -> None:
    """4 sessions spread 2/2; the two on worker 1 end, so the balancer moves one of worker 0's mid-stream."""
    clips = [synth_speechlike(s, seed=800 + i) for i, s in enumerate([6.2, 2.1, 6.7, 2.4])]
    settings = dict(workers=2, max_append_bytes=64_000, rebalance_interval_s=0.1, rebalance_spread=2)
    with ServiceProcess(model_dir, **settings) as svc:

        async def run() -> tuple[list[list[TranscriptEvent]], list[dict]]:
            async with ParastreamClient(svc.base_url) as client:
                sessions = [(await client.create_session())["id"] for _ in clips]
                placed = [(await session_info(client, sid))["worker"] for sid in sessions]
                assert placed == [0, 1, 0, 1]  # placement spreads them evenly: nothing to balance yet
                watchers = [asyncio.create_task(collect(client, sid)) for sid in sessions]
                # Everyone gets audio; worker 1's two short sessions end, leaving it idle and worker 0 with two.
                for sid, clip in zip(sessions, clips):
                    await client.append(sid, clip[:24_000])
                for i in (1, 3):
                    await client.append(sessions[i], clips[i][24_000:])
                    await client.close(sessions[i])
                await asyncio.gather(watchers[1], watchers[3])

                async def moved() -> bool:
                    return (await session_info(client, sessions[2]))["worker"] == 1

                # Worker 0's sessions stream on meanwhile; the newest of them (session 2) is the one moved.
                streams = [
                    asyncio.create_task(
                        stream_in_pieces(client, sessions[i], clips[i][24_000:], random.Random(i), speed=2.0, close=False)
                    )
                    for i in (0, 2)
                ]
                await until(moved, 10, "the balancer to move session 2 to worker 1")
                await asyncio.gather(*streams)
                for i in (0, 2):
                    await client.close(sessions[i])
                results = await asyncio.wait_for(asyncio.gather(*watchers), 60)
                infos = [await session_info(client, sid) for sid in sessions]
                return results, infos

        results, infos = asyncio.run(run())
        for clip, events in zip(clips, results):
            assert_clean_log(events, reference_tokens(model_dir, clip))
        assert [info["migrations"] for info in infos] == [0, 0, 1, 0]
        assert [info["restores"] for info in infos] == [0, 0, 0, 0]  # a move is no crash restore
        assert _migrated(svc.base_url, "rebalance") == 1  # one move evened it out (1/1): no more
        assert _migrated(svc.base_url, "manual") == 0
        line = f"moving session {infos[2]['id']} from worker 0 to worker 1 (rebalance; sessions per ready worker:"
        assert line in svc.log()
    assert segments_of(svc.pid) == []
    svc.remove_log()


def test_forced_migrations_mid_stream_change_nothing(model_dir: Path) -> None:
    """8 sessions streaming on 2 workers; several are moved mid-stream through the operator endpoint, one while its
    worker is stopped (so the move is held in flight: others are refused, and a close meanwhile still ends right)."""
    clips = [synth_speechlike(s, seed=900 + i) for i, s in enumerate([7.1, 6.3, 8.0, 6.6, 7.4, 2.9, 7.7, 6.9])]
    held = 5  # the shortest clip: all of it is in before the others end
    settings = dict(workers=2, max_append_bytes=64_000, rebalance_interval_s=0)  # no balancer: only forced moves
    with ServiceProcess(model_dir, **settings) as svc:

        async def run() -> tuple[list[list[TranscriptEvent]], list[dict], int, list[tuple[dict, int]]]:
            async with ParastreamClient(svc.base_url) as client:
                http = client.http
                sessions = [(await client.create_session())["id"] for _ in clips]
                watchers = [asyncio.create_task(collect(client, sid)) for sid in sessions]
                appended = {sid: asyncio.Event() for sid in sessions}
                mid_stream_moves_done = asyncio.Event()
                moves_done = asyncio.Event()

                async def info(sid: str) -> dict:
                    return await session_info(client, sid)

                async def stream(i: int) -> None:
                    # The moved sessions hold their last second back until their moves are done: every move lands
                    # mid-stream, however slow the machine.
                    clip = clips[i]
                    cut = len(clip) - HELD_BACK if i in MOVED else len(clip)
                    await stream_in_pieces(client, sessions[i], clip[:cut], random.Random(i), speed=2.0, close=False)
                    if cut < len(clip):
                        await mid_stream_moves_done.wait()
                        await client.append(sessions[i], clip[cut:])
                    appended[sessions[i]].set()
                    await moves_done.wait()  # every session is open while the moves happen
                    await client.close(sessions[i])  # (the held one was closed before: closing twice is harmless)

                async def migrate(sid: str, body: dict | None = None) -> httpx.Response:
                    return await http.post(f"/v1/sessions/{sid}/migrate", json=body)

                async def move_and_wait(sid: str, body: dict | None = None) -> dict:
                    r = await migrate(sid, body)
                    assert r.status_code == 202, r.text
                    moved = r.json()
                    assert moved["worker"] != moved["from_worker"]

                    async def arrived() -> bool:
                        return (await info(sid))["worker"] == moved["worker"]

                    await until(arrived, 10, f"session {sid} to reach worker {moved['worker']}")
                    return moved

                async def mover() -> tuple[int, list[tuple[dict, int]]]:
                    # Refusals first: unknown session, no such worker, the worker it is on, a bad body.
                    sid = sessions[0]
                    here = (await info(sid))["worker"]
                    assert (await migrate("0" * 32)).status_code == 404
                    bad = await migrate(sid, {"worker": 7})
                    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_worker"
                    same = await migrate(sid, {"worker": here})
                    assert same.status_code == 422 and same.json()["error"]["code"] == "invalid_worker"
                    assert (await migrate(sid, {"worker": -1})).status_code == 422

                    async def strides_done_everywhere() -> bool:
                        return all([(await info(sid))["samples_processed"] > 0 for sid in sessions])

                    await until(strides_done_everywhere, 30, "a stride done in every session")
                    # Moves mid-stream: default target (the least-loaded other worker), an explicit one, and back.
                    moves = [await move_and_wait(sessions[0])]
                    when = [(await info(sessions[0]), len(clips[0]))]
                    for i in (1, 2, 3):
                        target = 1 - (await info(sessions[i]))["worker"]
                        moves.append(await move_and_wait(sessions[i], {"worker": target}))
                        when.append((await info(sessions[i]), len(clips[i])))
                    moves.append(await move_and_wait(sessions[0]))  # there and back
                    when.append((await info(sessions[0]), len(clips[0])))
                    mid_stream_moves_done.set()
                    # A move held in flight: stop the worker the held session is on, so it cannot answer DetachSession.
                    await appended[sessions[held]].wait()
                    source = (await info(sessions[held]))["worker"]
                    pid = svc.workers()[source]["pid"]
                    os.kill(pid, signal.SIGSTOP)
                    try:
                        first = await migrate(sessions[held], {"worker": 1 - source})
                        assert first.status_code == 202, first.text
                        again = await migrate(sessions[held])
                        other = await migrate(sessions[6])
                        for refused in (again, other):
                            assert refused.status_code == 409, refused.text
                            assert refused.json()["error"]["code"] == "migration_in_flight"
                            assert refused.headers["Retry-After"] == "1"
                        # Closed while moving: only the RestoreSession carries the close to the new worker.
                        assert (await client.close(sessions[held]))["state"] == "closing"
                        assert (await info(sessions[held]))["worker"] == source  # not moved until detached
                    finally:
                        os.kill(pid, signal.SIGCONT)

                    async def held_arrived() -> bool:
                        # Counted once the target has it; closed and fully received, it may end (and leave every
                        # worker) right after, so the worker alone is no condition to wait for.
                        state = await info(sessions[held])
                        return state["migrations"] == 1 and state["worker"] in (1 - source, None)

                    await until(held_arrived, 10, "the held move to finish")
                    moves_done.set()
                    return len(moves) + 1, when

                streams = [asyncio.create_task(stream(i)) for i in range(len(clips))]
                moved, when = await mover()
                await asyncio.gather(*streams)
                results = await asyncio.wait_for(asyncio.gather(*watchers), 60)
                late = await migrate(sessions[0])  # finished: nothing to move
                assert late.status_code == 409 and late.json()["error"]["code"] == "session_not_open"
                infos = [await info(sid) for sid in sessions]
                return results, infos, moved, when

        results, infos, moved, when = asyncio.run(run())
        for clip, events in zip(clips, results):
            assert_clean_log(events, reference_tokens(model_dir, clip))
        # Mid-stream: each move landed after the session had transcribed audio and before all of it was in.
        for state, length in when:
            assert 0 < state["samples_processed"] and state["samples_received"] < length, state
            assert state["state"] == "open"
        assert sum(info["migrations"] for info in infos) == moved == 6
        assert infos[0]["migrations"] == 2 and infos[held]["migrations"] == 1
        assert all(info["restores"] == 0 for info in infos)
        assert _migrated(svc.base_url, "manual") == moved
        assert _migrated(svc.base_url, "rebalance") == 0
    assert segments_of(svc.pid) == []
    svc.remove_log()
