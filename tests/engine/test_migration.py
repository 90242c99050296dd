"""Moving a live session between two workers' cores at a stride boundary, in-process on the real (tiny-random) model.

The old core detaches the session (its last snapshot is its whole state), the new one restores it from that snapshot
and the ring, as the engine does when it rebalances: the tokens must be FunASR's own, whatever the moves.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from engine.errors import InvalidWorker, MigrationInFlight, NotReady, SessionNotFound, SessionNotOpen
from engine.messages import (
    AudioReady,
    CloseSession,
    DetachSession,
    OpenSession,
    RestoreSession,
    SessionDetached,
    SessionFailed,
    StreamOptions,
    StrideDone,
)
from engine.ring import RingWriter
from engine.service import Engine
from engine.sessions import Session, SessionState
from engine.settings import Settings
from engine.supervisor import WorkerSlot
from engine.worker.core import WorkerCore
from tests.audio import synth_speechlike
from tests.reference_cache import reference_tokens

STRIDE = StreamOptions().stride_samples


@pytest.fixture(scope="module")
def cores(tiny_model_dir: Path) -> tuple[WorkerCore, WorkerCore]:
    """Two workers' cores. They share one loaded model, as forked workers share the host's weights."""
    from engine.model.adapter import StreamingModel

    model = StreamingModel.load(str(tiny_model_dir))
    return WorkerCore(model), WorkerCore(model)


def _stream_with_moves(
    cores: tuple[WorkerCore, WorkerCore], ring: RingWriter, clip: np.ndarray, moves_at: list[int], seed: int,
    move_while_closing: bool = False,
) -> list[str]:
    """Stream `clip` in random pieces; after `moves_at[i]` strides, move the session to the other core. With
    `move_while_closing` the last move happens right after the close, which only the RestoreSession then carries
    (the engine sends a moving session's close to nobody)."""
    sid = "moving"
    rng = random.Random(seed)
    here, there = cores
    here.open(OpenSession(sid, ring.name, StreamOptions()))
    tokens: list[str] = []
    processed = strides = pos = 0
    end_pos: int | None = None
    moves = list(moves_at)

    def move() -> None:
        nonlocal here, there
        assert here.detach(DetachSession(sid)) == [SessionDetached(sid, processed)]
        assert sid not in here.sessions
        restore = RestoreSession(
            sid, ring.name, StreamOptions(), processed, tuple(tokens), end_pos, "closed" if end_pos is not None else ""
        )
        assert there.open(restore) == []  # the old core reported every stride it ran: nothing to catch up
        here, there = there, here

    while True:
        while moves and strides >= moves[0]:
            moves.pop(0)
            move()
        if pos < len(clip):
            n = rng.randint(1000, 14000)
            ring.write(clip[pos : pos + n].tobytes())
            pos += n
            if pos >= len(clip):
                end_pos = ring.write_pos
                if move_while_closing:
                    move()
                else:
                    here.close(CloseSession(sid, end_pos))
        for msg in here.run_once():
            assert isinstance(msg, StrideDone) and msg.session_id == sid, msg
            assert not there.sessions  # never on two workers at once
            tokens.extend(msg.tokens)
            processed = msg.processed_pos
            if msg.final:
                assert not here.sessions and not there.sessions
                assert not moves, f"the clip ended before the moves at {moves}"
                return tokens
            strides += 1


@pytest.mark.parametrize(
    "moves_at",
    [[0], [1], [3], [1, 2], [2, 4, 5]],
    ids=["before-any-stride", "after-1", "after-3", "there-and-back", "three-moves"],
)
def test_moved_session_matches_reference(
    cores, rings, tiny_model_dir: Path, moves_at: list[int]  # noqa: ANN001
) -> None:
    clip = synth_speechlike(4.3, seed=700 + sum(moves_at))  # 7 full strides and a remainder
    tokens = _stream_with_moves(cores, rings(), clip, moves_at, seed=len(moves_at))
    assert tokens == reference_tokens(tiny_model_dir, clip)


def test_moved_while_closing_matches_reference(cores, rings, tiny_model_dir: Path) -> None:  # noqa: ANN001
    clip = synth_speechlike(3.5, seed=731)
    tokens = _stream_with_moves(cores, rings(), clip, [2], seed=5, move_while_closing=True)
    assert tokens == reference_tokens(tiny_model_dir, clip)


def test_detach_of_unknown_or_finished_session_answers_nothing(cores, rings) -> None:  # noqa: ANN001
    core, _ = cores
    assert core.detach(DetachSession("never-opened")) == []
    ring = rings()
    core.open(OpenSession("done", ring.name, StreamOptions()))
    ring.write(synth_speechlike(0.3, seed=9).tobytes())
    core.close(CloseSession("done", ring.write_pos))
    (final,) = core.run_once()
    assert isinstance(final, StrideDone) and final.final
    assert core.detach(DetachSession("done")) == []  # it finished first: its final went out, nothing else follows
    assert core.sessions == {}


# --- the engine's side of a move, against a stand-in supervisor (no processes) ---------------------------------


class FakeSupervisor:
    """Slots and a record of what was sent, for driving `Engine`'s bookkeeping by hand."""

    def __init__(self, n: int) -> None:
        self.slots = [WorkerSlot(i, (i,), "cpu", ready=True) for i in range(n)]
        self.sent: list[tuple[int, object]] = []
        self.halt_reason: str | None = None

    @property
    def ready(self) -> bool:
        return all(slot.ready for slot in self.slots)

    @property
    def any_hope(self) -> bool:
        return any(not slot.halted for slot in self.slots)

    @property
    def size(self) -> int:
        return len(self.slots)

    def ready_indices(self) -> list[int]:
        return [slot.index for slot in self.slots if slot.ready]

    def is_ready(self, slot: int) -> bool:
        return 0 <= slot < len(self.slots) and self.slots[slot].ready

    def send(self, slot_index: int | None, msg: object) -> bool:
        if slot_index is None:
            return False
        self.sent.append((slot_index, msg))
        return True

    def take(self) -> list[tuple[int, object]]:
        sent, self.sent = self.sent, []
        return sent


@pytest.fixture
def make_engine():
    made: list[Engine] = []

    def make(slots: int, **settings: object) -> Engine:
        engine = Engine(Settings(_env_file=None, **settings), supervisor=FakeSupervisor(slots))  # type: ignore[arg-type]
        engine.accepting = True
        made.append(engine)
        return engine

    yield make
    for engine in made:
        for session in engine.sessions.values():
            if session.ring is not None:
                session.ring.unlink()


def _migrated(reason: str) -> float:
    return REGISTRY.get_sample_value("parastream_sessions_migrated_total", {"reason": reason}) or 0.0


def _open(engine: Engine, n: int) -> list[Session]:
    return [engine.create_session(16000, StreamOptions()) for _ in range(n)]


PCM = np.zeros(4000, dtype="<i2").tobytes()


def test_engine_move_detaches_then_restores_and_is_no_crash_restore(make_engine) -> None:  # noqa: ANN001
    engine = make_engine(3)
    a, b, _ = _open(engine, 3)  # one per worker
    sup = engine.supervisor
    sup.take()
    before = _migrated("manual")
    assert engine.start_migration(a.id, 2) == 2
    assert sup.take() == [(0, DetachSession(a.id))]
    with pytest.raises(MigrationInFlight):
        engine.start_migration(b.id)
    assert not engine.migrate(a.id, 1)
    engine.append(a.id, PCM)  # into the ring; nobody is woken while it moves
    assert sup.take() == []
    assert engine.placement.worker(a.id) == 0 and a.id in engine.placement.sessions_on(0)  # the old worker's until it says it let go
    engine.on_worker_message(0, StrideDone(a.id, 9600, ("x",), "x"))  # its last stride, then the answer
    engine.on_worker_message(0, SessionDetached(a.id, 9600))
    assert sup.take() == [(2, RestoreSession(a.id, a.ring.name, a.options, 9600, ("x",), None, ""))]
    assert engine.placement.worker(a.id) == 2 and a.id in engine.placement.sessions_on(2) and a.id not in engine.placement.sessions_on(0)
    assert (a.restores, a.migrations, a.tokens) == (0, 1, ["x"])
    assert _migrated("manual") == before + 1
    engine.on_worker_message(0, StrideDone(a.id, 19200, ("y",), "xy"))  # anything late from the old worker: dropped
    assert a.tokens == ["x"]
    engine.append(a.id, PCM)
    assert sup.take() == [(2, AudioReady(a.id))]
    assert engine.start_migration(b.id) == 0  # the next move may start; by default to the least loaded other


def test_engine_close_and_abort_while_moving(make_engine) -> None:  # noqa: ANN001
    engine = make_engine(2)
    a, b = _open(engine, 2)
    sup = engine.supervisor
    engine.append(a.id, PCM)
    engine.start_migration(a.id, 1)
    engine.close(a.id)  # recorded; the RestoreSession carries it
    sup.take()
    engine.on_worker_message(0, SessionDetached(a.id, 0))
    assert sup.take() == [(1, RestoreSession(a.id, a.ring.name, a.options, 0, (), 4000, "closed"))]

    engine.start_migration(b.id, 0)
    sup.take()
    engine.abort(b.id)  # nothing to send: the old worker drops it on the DetachSession already queued
    assert sup.take() == [] and not engine.placement.moving and b.id not in engine.placement.sessions_on(1)
    engine.on_worker_message(1, SessionDetached(b.id, 0))  # the answer still comes: ignored
    assert sup.take() == []


def test_engine_session_ending_before_detach_clears_the_move(make_engine) -> None:  # noqa: ANN001
    engine = make_engine(2)
    a, b = _open(engine, 2)
    engine.start_migration(a.id, 1)
    engine.on_worker_message(0, SessionFailed(a.id, "boom"))  # (a final ends it the same way)
    assert a.state is SessionState.FAILED and not engine.placement.moving
    engine.supervisor.take()
    engine.on_worker_message(0, SessionDetached(a.id, 0))
    assert engine.supervisor.take() == []
    assert engine.migrate(b.id, 0)


def test_engine_source_dying_mid_move_restores_once(make_engine) -> None:  # noqa: ANN001
    engine = make_engine(2)
    a, _ = _open(engine, 2)
    sup = engine.supervisor
    engine.start_migration(a.id, 1)
    sup.take()
    sup.slots[0].ready = False  # lost (being respawned)
    engine.on_worker_lost(0, "killed")
    assert sup.take() == [(1, RestoreSession(a.id, a.ring.name, a.options, 0, (), None, ""))]
    assert engine.placement.worker(a.id) == 1 and a.restores == 1 and a.migrations == 0 and not engine.placement.moving
    engine.on_worker_message(0, SessionDetached(a.id, 0))  # (the supervisor drops a dead generation's news anyway)
    assert sup.take() == []


def test_engine_target_lost_mid_move_falls_back_to_least_loaded(make_engine) -> None:  # noqa: ANN001
    engine = make_engine(3)
    a, b, c, d = _open(engine, 4)  # slots 0, 1, 2, 0
    engine.abort(b.id)
    engine.abort(c.id)  # now 0: {a, d}; 1 and 2 idle
    sup = engine.supervisor
    engine.start_migration(a.id, 2)
    sup.slots[2].ready, sup.slots[2].halted = False, True
    engine.on_worker_lost(2, "halted")
    sup.take()
    engine.on_worker_message(0, SessionDetached(a.id, 0))
    assert sup.take() == [(1, RestoreSession(a.id, a.ring.name, a.options, 0, (), None, ""))]
    assert engine.placement.worker(a.id) == 1 and a.restores == 0 and a.migrations == 1


def test_engine_balancer_moves_the_newest_open_session_of_the_busiest(make_engine) -> None:  # noqa: ANN001
    engine = make_engine(2, rebalance_spread=2)
    a, b, c, d, e = _open(engine, 5)  # 0: a c e, 1: b d
    assert engine._rebalance() is None  # 3 vs 2: under the spread
    engine.close(e.id)  # closing: about to end, never moved
    engine.abort(b.id)  # 3 vs 1
    before = _migrated("rebalance")
    assert engine._rebalance() == c.id
    assert engine._rebalance() is None  # one move at a time
    engine.on_worker_message(0, SessionDetached(c.id, 0))
    assert engine.placement.worker(c.id) == 1 and _migrated("rebalance") == before + 1
    assert engine._rebalance() is None  # 2 vs 1


def test_engine_refuses_moves_it_cannot_make(make_engine) -> None:  # noqa: ANN001
    engine = make_engine(2)
    a, b = _open(engine, 2)
    with pytest.raises(SessionNotFound):
        engine.start_migration("nope")
    with pytest.raises(InvalidWorker):
        engine.start_migration(a.id, 2)
    with pytest.raises(InvalidWorker):
        engine.start_migration(a.id, 0)  # already there
    engine.supervisor.slots[1].ready = False
    with pytest.raises(NotReady):
        engine.start_migration(a.id, 1)
    with pytest.raises(NotReady):
        engine.start_migration(a.id)  # no other ready worker
    engine.supervisor.slots[1].ready = True
    engine.close(b.id)
    with pytest.raises(SessionNotOpen):
        engine.start_migration(b.id, 0)
    engine.draining = True
    with pytest.raises(NotReady):
        engine.start_migration(a.id, 1)
    assert engine.supervisor.sent[-1][1] == CloseSession(b.id, 0, "closed")  # no DetachSession went out
