"""Where each session lives: the one owner of placement, orphans, moves, the balancer's choice and restores.

A session is on exactly one worker slot, or between workers:
- **orphaned**: its worker died (or the worker it was moving to went away), and it waits for a ready worker;
- **moving**: its old worker was sent DetachSession and has not answered yet. Until SessionDetached arrives the
  session still counts as the old worker's, so that worker's news about it is taken, and nothing new is sent to
  it (the RestoreSession to the new worker carries everything, `route`).

Every way a session arrives on a worker after its first (a crash restore, a move, a move whose target went away)
is one RestoreSession built in `_restore_on`: the worker loads the last snapshot and replays the ring from there,
told what the API process has heard so nothing is reported twice. Load is measured one way for placement, restores
and the balancer: sessions placed on a slot, then the lowest slot index (`_least_loaded`).

It runs on the API process's event loop and talks to workers only through the `WorkerPool` it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from engine import logs, metrics
from engine.errors import InvalidWorker, MigrationInFlight, NotReady
from engine.events import ErrorCode
from engine.messages import DetachSession, RestoreSession, SessionDetached, ToWorker
from engine.sessions import Session, SessionState

log = logging.getLogger(__name__)


class WorkerPool(Protocol):
    """What placement needs of the supervisor: which slots exist and are ready, and a way to message one."""

    @property
    def size(self) -> int: ...

    def ready_indices(self) -> list[int]: ...

    def is_ready(self, slot: int) -> bool: ...

    @property
    def any_hope(self) -> bool: ...

    def send(self, slot: int | None, msg: ToWorker) -> bool: ...


@dataclass(frozen=True)
class Migration:
    """A move asked of `source` (DetachSession sent) and not yet answered (SessionDetached)."""

    source: int
    target: int
    reason: str  # "rebalance" | "manual"


class Placement:
    def __init__(
        self,
        workers: WorkerPool,
        max_restores: int,
        fail: Callable[[Session, ErrorCode, str], None],
    ) -> None:
        self._workers = workers
        self._max_restores = max_restores
        self._fail = fail  # ends a session with an error event (the engine's)
        self._slot_of: dict[str, int | None] = {}  # every placed session; None while it is between workers
        self._on_slot: dict[int, set[str]] = {}  # the same, by slot (kept in step here, and only here)
        # Sessions waiting for a ready worker, in order; True for a crash (which counts against max_restores), False
        # for a move that found no worker to go to.
        self._orphans: dict[str, bool] = {}
        self._migrations: dict[str, Migration] = {}  # at most one at a time (see start_move)

    # --- reading ------------------------------------------------------------------------------------------

    def worker(self, session_id: str) -> int | None:
        """The slot that holds the session (a moving session's is its old one until that worker lets go)."""
        return self._slot_of.get(session_id)

    def route(self, session_id: str) -> int | None:
        """The slot to tell about a session: none while it is between workers or moving (its RestoreSession will
        carry the ring, the end position of a close, and the rest; an abort needs no message at all)."""
        return None if session_id in self._migrations else self._slot_of.get(session_id)

    def load(self, slot: int) -> int:
        """Sessions placed on `slot`."""
        return len(self._on_slot.get(slot, ()))

    def sessions_on(self, slot: int) -> frozenset[str]:
        return frozenset(self._on_slot.get(slot, ()))

    @property
    def moving(self) -> frozenset[str]:
        return frozenset(self._migrations)

    def _least_loaded(self, slots: Iterable[int]) -> int | None:
        return min(slots, key=lambda slot: (self.load(slot), slot), default=None)

    # --- placing and forgetting ---------------------------------------------------------------------------

    def choose(self) -> int | None:
        """Where a new session goes: the least-loaded ready slot, or None when no slot is ready."""
        return self._least_loaded(self._workers.ready_indices())

    def assign(self, session_id: str, slot: int | None) -> None:
        old = self._slot_of.get(session_id)
        if old is not None:
            self._on_slot[old].discard(session_id)
        self._slot_of[session_id] = slot
        if slot is not None:
            self._on_slot.setdefault(slot, set()).add(session_id)

    def forget(self, session_id: str) -> None:
        """The session ended: it holds no place anywhere any more."""
        self.assign(session_id, None)
        self._slot_of.pop(session_id, None)
        self._orphans.pop(session_id, None)
        self._migrations.pop(session_id, None)

    # --- moves --------------------------------------------------------------------------------------------

    def start_move(self, session: Session, target: int | None, reason: str) -> int:
        """Ask the session's worker to let it go (DetachSession) so that `target` (default: the least-loaded other
        ready slot) can take it over; returns the target. The caller has checked that the session is open.

        One move at a time: a move waits for the old worker's current stride, and the balancer looks at loads only
        when none is under way, so it never decides on counts that are about to change."""
        size = self._workers.size
        source = self._slot_of.get(session.id)
        if target is not None and not 0 <= target < size:
            raise InvalidWorker(f"no worker {target}: the workers are 0..{size - 1}", worker=target)
        if target is not None and target == source:
            raise InvalidWorker(f"session {session.id} is on worker {target} already", worker=target)
        if self._migrations:
            moving = next(iter(self._migrations))
            raise MigrationInFlight(f"session {moving} is being moved; one move at a time", retry_after_s=1)
        if source is None:
            raise MigrationInFlight(f"session {session.id} is being carried over after a crash", retry_after_s=1)
        if target is None:
            target = self._least_loaded(i for i in self._workers.ready_indices() if i != source)
            if target is None:
                raise NotReady("no other worker is ready", retry_after_s=2)
        elif not self._workers.is_ready(target):
            raise NotReady(f"worker {target} is not ready", retry_after_s=2)
        if not self._workers.send(source, DetachSession(session.id)):
            raise NotReady(f"worker {source} is being replaced", retry_after_s=1)
        self._migrations[session.id] = Migration(source, target, reason)
        loads = {i: self.load(i) for i in self._workers.ready_indices()}
        log.info(
            "moving session %s from worker %d to worker %d (%s; sessions per ready worker: %s)",
            session.id, source, target, reason, loads, extra=logs.fields(session),
        )
        return target

    def on_detached(self, session: Session, msg: SessionDetached) -> None:
        """The old worker let the session go; every stride it computed has been heard. Restore it on the target."""
        move = self._migrations.pop(session.id, None)
        source = self._slot_of.get(session.id)
        slot = move.target if move is not None and self._workers.is_ready(move.target) else None
        if slot is None:
            # The target died or was halted meanwhile (or no move was asked): the least-loaded ready worker takes
            # it, maybe the old one.
            slot = self._least_loaded(self._workers.ready_indices())
            if slot is None:
                self.assign(session.id, None)
                self._orphans[session.id] = False
                self.place_orphans({session.id: session})
                return
            log.warning("session %s: worker %s is gone; moving it to worker %d instead",
                        session.id, move.target if move else None, slot, extra=logs.fields(session))
        self._restore_on(slot, session)
        if slot != source:
            session.migrations += 1
            metrics.SESSIONS_MIGRATED.labels(move.reason if move else "manual").inc()
        log.info(
            "session %s moved from worker %s to worker %d at sample %d", session.id, source, slot, msg.processed_pos,
            extra=logs.fields(session),
        )

    def rebalance_choice(self, sessions: dict[str, Session], spread: int) -> tuple[Session, int] | None:
        """The session to move, and where, when the busiest and idlest ready slots differ by `spread` sessions or
        more. Placement already evens out new sessions, so this mends what endings leave behind (long calls piling up
        on one worker while the other's calls finished).

        Which session: the newest open one. How much audio a session has still to come is unknown; the newest is the
        best guess for the most, so the move pays off longest, and it has the least history to hand over. Closing
        sessions stay: they are about to end."""
        if self._migrations or self._orphans:
            return None  # (orphans: restores are about to change the counts)
        ready = self._workers.ready_indices()
        if len(ready) < 2:
            return None
        busiest = max(ready, key=lambda slot: (self.load(slot), -slot))
        idlest = self._least_loaded(ready)
        assert idlest is not None
        if self.load(busiest) - self.load(idlest) < spread:
            return None
        candidates = [
            session
            for session_id in self._on_slot.get(busiest, ())
            if (session := sessions.get(session_id)) is not None and session.state is SessionState.OPEN
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda s: s.created_at), idlest

    # --- crashes ------------------------------------------------------------------------------------------

    def on_worker_lost(self, slot: int, sessions: dict[str, Session]) -> None:
        """The worker's sessions are not lost: their state is in their snapshots and their audio in their rings.
        Each waits for a ready worker (maybe the replacement in the same slot), which carries on from there."""
        for session_id in list(self._on_slot.get(slot, ())):
            # A session moving away from this worker is restored once, here, as a crash: the move is off (its
            # SessionDetached, if it was sent at all, carries the dead generation and is dropped). A session moving
            # *to* this worker is not on it yet; `on_detached` sends it elsewhere.
            self._migrations.pop(session_id, None)
            self.assign(session_id, None)
            session = sessions.get(session_id)
            if session is not None and session.state.holds_resources:
                self._orphans[session_id] = True
        metrics.WORKER_RESTARTS.inc()
        self.place_orphans(sessions)

    def place_orphans(self, sessions: dict[str, Session]) -> None:
        if not self._orphans:
            return
        if not self._workers.ready_indices():
            if not self._workers.any_hope:  # every slot is halted: nobody will ever take them
                for session_id in list(self._orphans):
                    session = sessions.get(session_id)
                    self._orphans.pop(session_id)
                    if session is not None and session.state.holds_resources:
                        self._fail(session, ErrorCode.WORKER_DIED, "its worker died and no healthy worker is left")
            return
        for session_id in list(self._orphans):
            crashed = self._orphans.pop(session_id)
            session = sessions.get(session_id)
            if session is None or not session.state.holds_resources or session.ring is None:
                continue
            slot = self._least_loaded(self._workers.ready_indices())
            assert slot is not None
            if not crashed:  # a move whose worker went away: not a restore
                self._restore_on(slot, session)
                continue
            if session.restores >= self._max_restores:
                # A session that keeps killing workers (a poison input) must not take them all down in turn.
                self._fail(session, ErrorCode.WORKER_DIED, f"its worker died {session.restores + 1} times; giving up on it")
                continue
            session.restores += 1
            self._restore_on(slot, session)
            metrics.SESSIONS_RESTORED.inc()
            log.warning(
                "session %s restored on worker %d (restore %d)", session_id, slot, session.restores,
                extra=logs.fields(session),
            )

    def take_over(self, session: Session) -> int | None:
        """Place a session another node began (engine/cluster/) on the least-loaded ready worker, which carries it on
        from its snapshot as after a crash; None if no worker is ready."""
        slot = self.choose()
        if slot is not None:
            self._restore_on(slot, session)
        return slot

    def _restore_on(self, slot: int, session: Session) -> None:
        assert session.ring is not None
        self.assign(session.id, slot)
        closing = session.state is SessionState.CLOSING
        self._workers.send(
            slot,
            RestoreSession(
                session.id,
                session.ring.name,
                session.options,
                session.processed_pos,
                tuple(session.tokens),
                session.end_pos if closing else None,
                session.close_reason,
                session.pipeline,
                len(session.sentences),
                session.protocol,
            ),
        )
