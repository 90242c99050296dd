"""The SDK's side of a node's loss (app/sdk/replay.py): it keeps the audio after `samples_durable` and sends it again
when the service asks (409 offset_gap), on an append or on the close; everything durable is forgotten."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np

from app.sdk import AsyncClient
from app.sdk.errors import APIError
from app.sdk.replay import Kept


class FakeCluster:
    """A session whose node is lost once, after `lose_at` samples: the next node has what was durable (every
    `durable_every` samples), as a real takeover would."""

    def __init__(self, lose_at: int, durable_every: int) -> None:
        self.pcm = bytearray()
        self.durable = 0
        self.lose_at = lose_at
        self.durable_every = durable_every
        self.lost = False
        self.closed_at: int | None = None
        self.offsets: list[int] = []

    def received(self) -> int:
        return len(self.pcm) // 2

    def gap(self) -> httpx.Response:
        error = {"code": "offset_gap", "message": "send the rest", "expected_offset": self.received()}
        return httpx.Response(409, json={"error": error})

    def handle(self, request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"]) if "offset" in request.url.params else None
        if request.url.path.endswith("/audio"):
            assert offset is not None
            self.offsets.append(offset)
            if offset > self.received():
                return self.gap()
            self.pcm += request.content[(self.received() - offset) * 2 :]
            if not self.lost and self.received() >= self.lose_at:
                self.lost = True  # the node dies: the next one has the last replica only
                del self.pcm[self.durable * 2 :]
                return httpx.Response(502)  # turned into a dropped connection by `_retry_502`
            self.durable = self.received() - self.received() % self.durable_every
            return httpx.Response(200, json={"samples_received": self.received(), "samples_durable": self.durable})
        if request.url.path.endswith("/close"):
            if offset is not None and offset > self.received():
                return self.gap()
            self.closed_at = self.received()
            return httpx.Response(200, json={"id": "s"})
        raise AssertionError(request.url)


def test_kept_audio_is_trimmed_to_what_is_not_durable() -> None:
    kept = Kept(100)
    kept.add(np.arange(10, dtype="<i2").tobytes())
    assert (kept.start, kept.end) == (100, 110)
    kept.forget_before(104)
    assert kept.since(106) == np.arange(6, 10, dtype="<i2").tobytes()
    assert kept.replay_from(APIError(409, "offset_gap", "", {"expected_offset": 105}), 110) == 105
    assert kept.replay_from(APIError(409, "offset_gap", "", {"expected_offset": 103}), 110) is None  # forgotten
    assert kept.replay_from(APIError(409, "session_not_open", "", {}), 110) is None


def test_a_lost_node_gets_back_the_audio_after_its_last_replica() -> None:
    """Appends: the service loses everything after its last durable point (its 502 is retried by resending; the
    retry hears 409 with the point to resend from). Close: sent with the end offset, so a node that lacks the tail
    asks for it first. Each sample reaches the final session exactly once, in order."""
    pcm = (np.arange(16000 * 3) % 2000).astype("<i2")

    async def run(fake: FakeCluster) -> None:
        transport = httpx.MockTransport(fake.handle)
        async with AsyncClient("http://cluster", transport=transport, retry_backoff_s=0.001) as client:
            client.http.event_hooks["response"].append(_retry_502)
            await client.send("s", pcm, close=True)

    # (loss after, durable every, whether the retried append is asked for older audio): with 1 s appends, a replica
    # every 10000 samples leaves 2000 not durable when the third append is lost, and every 7000 leaves 4000.
    for lose_at, every, went_back in ((16000, 3000, False), (40000, 10000, True), (40000, 7000, True)):
        fake = FakeCluster(lose_at, every)
        asyncio.run(run(fake))
        assert fake.lost and bytes(fake.pcm) == pcm.tobytes() and fake.closed_at == len(pcm)
        assert any(later < earlier for earlier, later in zip(fake.offsets, fake.offsets[1:])) == went_back


async def _retry_502(response: httpx.Response) -> None:
    # The SDK retries transport failures, not a 502; a dead node behind HAProxy reads as a dropped connection.
    if response.status_code == 502:
        raise httpx.RemoteProtocolError("the node died", request=response.request)


def test_close_after_a_reconnect_resends_what_the_new_node_lacks() -> None:
    fake = FakeCluster(lose_at=10**9, durable_every=1000)
    pcm = np.ones(5000, dtype="<i2")

    async def run() -> None:
        async with AsyncClient("http://cluster", transport=httpx.MockTransport(fake.handle)) as client:
            kept = Kept(0)
            kept.add(pcm.tobytes())
            fake.pcm += pcm.tobytes()[:4000]  # the new node has the first 2000 samples only
            await client._close("s", kept)  # what `stream` does when its event stream comes back

    asyncio.run(run())
    assert bytes(fake.pcm) == pcm.tobytes() and fake.closed_at == 5000
    assert json.dumps(fake.offsets) == "[2000]"
