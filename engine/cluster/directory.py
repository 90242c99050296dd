"""The shared session directory and snapshot store: every Redis command the cluster sends, in one place.

Ownership is the invariant this module enforces: a session's record names one node, and a node writes a session's
replica or events only while the record names it (`_WRITE_IF_OWNER`). A node takes a session over only by a
compare-and-set from the owner it saw (`_CLAIM`), so two nodes that both find a dead node's session cannot both
carry it on, and a node that lost a session (its heartbeat lapsed and another took over) can no longer overwrite
it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as redis

from engine.cluster.records import RecordState, Replica, SessionMeta, dump, load_event, load_meta, load_replica
from engine.events import Payload

# KEYS: session, events. ARGV: node, state, replica (or ""), then events to append. An ended session keeps its
# events only: its last replica (megabytes of snapshot) would never be read again.
_WRITE_IF_OWNER = """
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'replica', ARGV[3])
elseif ARGV[2] == 'ended' then redis.call('HDEL', KEYS[1], 'replica') end
for i = 4, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
return 1
"""
# KEYS: session. ARGV: expected owner, new owner.
_CLAIM = """
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'state', 'live')
return 1
"""


@dataclass(frozen=True)
class Found:
    """A session's record as another node finds it."""

    node: str
    state: RecordState
    meta: SessionMeta
    replica: Replica | None


class Directory:
    def __init__(self, url: str, prefix: str, node: str, node_ttl_s: float) -> None:
        self.redis = redis.Redis.from_url(url)
        self.prefix = prefix
        self.node = node
        self.node_ttl_ms = int(node_ttl_s * 1000)
        self._write = self.redis.register_script(_WRITE_IF_OWNER)
        self._claim = self.redis.register_script(_CLAIM)

    def _session(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def _events(self, session_id: str) -> str:
        return f"{self.prefix}events:{session_id}"

    def _node(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    async def close(self) -> None:
        await self.redis.aclose()

    # --- nodes ---------------------------------------------------------------------------------------------

    async def heartbeat(self, info: str) -> bool:
        """Renew this node's heartbeat; False if it had lapsed (other nodes may have taken its sessions over)."""
        renewed = await self.redis.set(self._node(self.node), info, px=self.node_ttl_ms, xx=True)
        if not renewed:
            await self.redis.set(self._node(self.node), info, px=self.node_ttl_ms)
        return bool(renewed)

    async def node_alive(self, node: str) -> bool:
        return bool(await self.redis.exists(self._node(node)))

    async def leave(self) -> None:
        await self.redis.delete(self._node(self.node))

    # --- sessions ------------------------------------------------------------------------------------------

    async def register(self, session_id: str, meta: SessionMeta, replica: Replica, expire_s: float) -> None:
        """A new session of this node (its create answer goes out only after this)."""
        key = self._session(session_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"node": self.node, "state": RecordState.LIVE.value, "meta": dump(meta),
                                    "replica": dump(replica)})
            pipe.expire(key, int(expire_s))
            await pipe.execute()

    async def replicate(
        self, session_id: str, replica: Replica | None, events: Sequence[Payload], state: RecordState, expire_s: float
    ) -> bool:
        """Store a replica and the events since the last one; False if another node owns the session now."""
        args: list[bytes | str] = [self.node, state.value, dump(replica) if replica is not None else ""]
        args += [dump(event) for event in events]
        written = await self._write(keys=[self._session(session_id), self._events(session_id)], args=args)
        if written:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.expire(self._session(session_id), int(expire_s))
                pipe.expire(self._events(session_id), int(expire_s))
                await pipe.execute()
        return bool(written)

    async def find(self, session_id: str) -> Found | None:
        fields: dict[bytes, bytes] = await self.redis.hgetall(self._session(session_id))  # type: ignore[assignment]  # decode_responses is off: bytes
        if not fields or b"meta" not in fields:
            return None
        state = RecordState(fields[b"state"].decode())
        replica = fields.get(b"replica") if state is not RecordState.ENDED else None
        return Found(fields[b"node"].decode(), state, load_meta(fields[b"meta"]), load_replica(replica) if replica else None)

    async def claim(self, session_id: str, owner: str) -> bool:
        """Make this node the session's owner if `owner` still is (compare-and-set)."""
        return bool(await self._claim(keys=[self._session(session_id)], args=[owner, self.node]))

    async def events(self, session_id: str, count: int | None) -> list[Payload]:
        """The session's first `count` replicated events (None: all of them)."""
        if count is not None and count <= 0:
            return []
        end = -1 if count is None else count - 1
        found: list[bytes] = await self.redis.lrange(self._events(session_id), 0, end)  # type: ignore[assignment]  # decode_responses is off: bytes
        return [load_event(data) for data in found]

    async def owner(self, session_id: str) -> str | None:
        node: bytes | None = await self.redis.hget(self._session(session_id), "node")  # type: ignore[assignment]  # decode_responses is off: bytes
        return node.decode() if node else None

    async def forget(self, session_id: str) -> None:
        """An aborted session: nothing of it may come back."""
        await self.redis.delete(self._session(session_id), self._events(session_id))
