"""A session as the service describes it (`POST /v1/sessions`, `GET /v1/sessions/{id}`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.sdk.audio import DEFAULT_SAMPLE_RATE


@dataclass(frozen=True)
class Session:
    """A session the service opened (`POST /v1/sessions`); `info` is the whole answer (docs/api.md)."""

    id: str
    sample_rate: int
    mode: str
    chunk_size: tuple[int, ...]
    info: Mapping[str, Any] = field(repr=False)

    @property
    def stride_ms(self) -> int:
        """The streaming model's stride (chunk_size[1] frames of 60 ms): the audio one partial covers at most."""
        return self.chunk_size[1] * 60 if len(self.chunk_size) > 1 else 600

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Session:
        return cls(
            str(info["id"]),
            int(info.get("sample_rate", DEFAULT_SAMPLE_RATE)),
            str(info.get("mode", "online")),
            tuple(int(x) for x in info.get("chunk_size", (0, 10, 5))),
            dict(info),
        )
