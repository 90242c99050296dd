"""The audio a client must keep until the service has it for good, and what the service asks to have again.

Without a cluster the service answers every append with `samples_durable` equal to `samples_received`, and
nothing is kept. In a cluster (docs/cluster.md) a session's state reaches the shared store every few strides; until
then its latest audio lives only on its node. If that node dies, the node that takes the session over has the state
up to the last replica and asks for the rest: an append or a close gets `409 offset_gap` with `expected_offset`,
and the client sends its audio again from there. So the SDK keeps every sample after the last `samples_durable`.
"""

from __future__ import annotations

from typing import Any

from app.sdk.errors import APIError


class Kept:
    """A session's audio from sample `start` to `end` (PCM16 LE mono bytes), oldest forgotten as it is durable."""

    def __init__(self, start: int) -> None:
        self.start = start
        self._pcm = bytearray()

    @property
    def end(self) -> int:
        return self.start + len(self._pcm) // 2

    def add(self, pcm: bytes) -> None:
        self._pcm += pcm

    def since(self, offset: int) -> bytes:
        return bytes(self._pcm[(offset - self.start) * 2 :])

    def forget_before(self, offset: int) -> None:
        drop = min(max(0, offset - self.start), len(self._pcm) // 2)
        if drop:
            del self._pcm[: drop * 2]
            self.start += drop

    def replay_from(self, exc: APIError, sent_to: int) -> int | None:
        """The offset to send again from, if `exc` asks for audio this client still has (else None: re-raise)."""
        expected: Any = exc.details.get("expected_offset") if exc.code == "offset_gap" else None
        if not isinstance(expected, int) or not self.start <= expected < sent_to:
            return None
        return expected
