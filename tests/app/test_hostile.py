"""Hostile input (issue 14): what a broken or malicious client can send through each door, REST, SSE, FunASR's
WebSocket (`ws://HOST:PORT/`) and OpenAI's (`/v1/realtime` and `/v1/audio/transcriptions`), and what must hold after
each case:

- the case got a clear answer: a 4xx with the JSON error shape (uvicorn's own 400 for what is not HTTP), or a
  WebSocket close with a code and a reason, or an `error` event on a connection that stays up (OpenAI realtime's way).
  A few inputs have an honest 200 and get it (a WAV header that lies about its length: the audio that is there);
- the service is up and ready, and its log has no traceback (a 500 or a 1011 would leave one);
- nothing leaked: no session open, no ring in /dev/shm, the API process's descriptors back to where they were;
- a well-behaved session that ran during the case has FunASR's own loop's tokens (tests/reference_cache.py). A
  bystander thread streams real audio in REST sessions back to back, at twice real time, throughout the module; each
  case ends with the bystander's session in progress being checked, and the leak checks run while it is paused.

One service for the module, set up so that the cases are quick: one worker, rings of 2 s (1,000 sessions hold 64 MB of
/dev/shm), room for 1,100 sessions (the 1,000 never used are all admitted, then closed by a 4 s idle timeout), a 5 MB
upload limit. tests/app/test_schema_fuzz.py fuzzes the REST API from its OpenAPI schema.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from app.client import ParastreamClient
from tests.audio import synth_speechlike
from tests.harness import CLEAN_EXIT, ServiceProcess, segments_of
from tests.helpers import collect, metric, subscribed
from tests.reference_cache import reference_tokens

SETTINGS: dict[str, Any] = dict(
    workers=1,
    max_sessions=1100,
    ring_seconds=2,
    session_idle_timeout_s=4,
    finished_session_ttl_s=5,
    max_append_bytes=64_000,
    max_upload_bytes=5_000_000,
    sse_ping_s=1,
    sse_send_timeout_s=3,
)
PCM = {"Content-Type": "application/octet-stream"}
FD_SLACK = 8  # the bystander's keep-alive connections come and go
TIMEOUT = 60  # for one case


# --- the service and the bystander ----------------------------------------------------------------------------


@dataclass
class Run:
    started: float
    ended: float
    ok: bool
    detail: str


class Bystander:
    """Well-behaved REST sessions back to back, in a thread and event loop of their own: each a clip streamed in
    100 ms appends at twice real time (a 429 is retried, as a client should), closed, and its final tokens compared
    with FunASR's own loop's. `pause()` waits for the session in progress to end and starts no other until
    `resume()`, which returns once the next one has started."""

    def __init__(self, base_url: str, clips: list[tuple[np.ndarray, list[str]]]) -> None:
        self.base_url = base_url
        self.clips = clips
        self.runs: list[Run] = []
        self._lock = threading.Lock()  # held by a session in progress, or by the test while paused
        self._pausing = threading.Event()
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="bystander", daemon=True)

    def start(self) -> None:
        self._pausing.set()
        self._lock.acquire()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.resume(wait=False)
        self._thread.join(60)

    def pause(self) -> None:
        self._pausing.set()
        self._lock.acquire()

    def resume(self, wait: bool = True) -> None:
        self._started.clear()
        self._pausing.clear()
        self._lock.release()
        if wait:
            assert self._started.wait(30), "the bystander did not start a session"

    def exact_during(self, t0: float, t1: float) -> list[Run]:
        """The bystander's sessions that overlapped [t0, t1]; the test asserts there is one and all were exact."""
        return [r for r in self.runs if r.started <= t1 and r.ended >= t0]

    async def _main(self) -> None:
        async with ParastreamClient(self.base_url, timeout=60) as client:
            n = 0
            while not self._stopping.is_set():
                if self._pausing.is_set() or not self._lock.acquire(blocking=False):
                    await asyncio.sleep(0.01)
                    continue
                try:
                    pcm, expected = self.clips[n % len(self.clips)]
                    n += 1
                    started = time.monotonic()
                    try:
                        tokens = await asyncio.wait_for(self._session(client, pcm), TIMEOUT)
                        run = Run(started, time.monotonic(), tokens == expected, f"{tokens} != {expected}")
                    except Exception as exc:  # recorded: the case that was running fails
                        run = Run(started, time.monotonic(), False, repr(exc))
                    self.runs.append(run)
                finally:
                    self._lock.release()
                await asyncio.sleep(0.02)  # let a pause() waiting on the lock take it

    async def _session(self, client: ParastreamClient, pcm: np.ndarray) -> list[str]:
        sid = (await client.create_session())["id"]
        events = await subscribed(client, sid)
        self._started.set()
        piece = 1600
        begun = time.monotonic()
        for i, start in enumerate(range(0, len(pcm), piece)):
            body = pcm[start : start + piece].astype("<i2").tobytes()
            while (r := await client.http.post(f"/v1/sessions/{sid}/audio", content=body, headers=PCM)).status_code == 429:
                await asyncio.sleep(0.1)
            r.raise_for_status()
            await asyncio.sleep(max(0.0, begun + (i + 1) * piece / 16000 / 2 - time.monotonic()))
        await client.close(sid)
        got = await asyncio.wait_for(events, TIMEOUT)
        assert got[-1].type == "final", got[-1]
        return list(got[-1].data["tokens"])


@dataclass
class Hostile:
    svc: ServiceProcess
    bystander: Bystander
    fds: int  # the API process's descriptors, quiet
    log_at: int = 0  # how much of the log the checks have read

    @property
    def url(self) -> str:
        return self.svc.base_url

    @property
    def ws(self) -> str:
        return self.svc.base_url.replace("http://", "ws://", 1)

    @property
    def port(self) -> int:
        return self.svc.port


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sessions_open(url: str) -> float:
    return metric(url, "parastream_sessions_open")


def settle(value: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str) -> None:
    """Until `done(value())`; fails after `timeout` s saying what the value was."""
    deadline = time.monotonic() + timeout
    while not done(now := value()):
        assert time.monotonic() < deadline, f"not settled in {timeout:g} s: {what}: {now}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def hostile(model_dir: Path) -> Iterator[Hostile]:
    clips = [synth_speechlike(1.2, seed=1400 + i) for i in range(3)]
    references = [reference_tokens(model_dir, clip) for clip in clips]
    assert all(references), "a bystander clip without tokens would prove nothing"
    with ServiceProcess(model_dir, **SETTINGS) as svc:
        bystander = Bystander(svc.base_url, list(zip(clips, references)))
        bystander.start()
        bystander.resume()
        bystander.pause()  # one session done: its keep-alive connections are part of the quiet baseline
        assert bystander.runs[-1].ok, bystander.runs[-1].detail
        settle(lambda: sessions_open(svc.base_url), lambda n: n == 0, 10, "sessions open")
        h = Hostile(svc, bystander, fd_count(svc.pid))
        h.log_at = len(svc.log(tail=10**9))
        try:
            yield h
        finally:
            bystander.stop()
    assert svc.proc is not None and svc.proc.returncode in CLEAN_EXIT, svc.log()
    assert segments_of(svc.pid) == []
    svc.remove_log()


# --- the cases ------------------------------------------------------------------------------------------------

Case = Callable[[Hostile], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def assert_error(r: httpx.Response, status: int | tuple[int, ...], code: str | None = None) -> dict[str, Any]:
    """A clear refusal: the status, and the JSON error shape (Parastream's or OpenAI's), with `code` if given."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    error = r.json()["error"]
    assert error["message"] and error["code"], error
    if code is not None:
        assert error["code"] == code, error
    return error


async def raw(h: Hostile, data: bytes, trickle_s: float = 0.0, timeout: float = 10.0) -> bytes:
    """Send `data` on a fresh TCP connection (one byte every `trickle_s` if set) and read until the server closes
    or a full response (headers and Content-Length body) has come."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    try:
        if trickle_s:
            for byte in data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(trickle_s)
        else:
            writer.write(data)
            await writer.drain()
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        None,
    )
    body = await reader.readexactly(length) if length is not None else await reader.read()
    return head + body


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> dict[str, Any]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


async def new_session(http: httpx.AsyncClient) -> str:
    r = await http.post("/v1/sessions", json={})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


class ParastreamClientOn(ParastreamClient):
    """ParastreamClient's event reader on an httpx client the case already has."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http


@contextlib.asynccontextmanager
async def client(h: Hostile) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=h.url, timeout=30) as http:
        yield http


# REST ---------------------------------------------------------------------------------------------------------


@case
async def rest_random_bodies(h: Hostile) -> None:
    """Random bytes as a session's options, under each content type: 422 (or 400), never a 5xx."""
    rng = random.Random(1401)
    async with client(h) as http:
        for i in range(30):
            body = rng.randbytes(rng.randrange(1, 2000))
            ctype = ["application/json", "application/octet-stream", "text/plain", "multipart/form-data"][i % 4]
            assert_error(await http.post("/v1/sessions", content=body, headers={"Content-Type": ctype}), (400, 422))


@case
async def rest_random_audio_is_audio(h: Hostile) -> None:
    """Random bytes appended to a session are PCM like any other: 200s, then a final event at the close."""
    rng = random.Random(1402)
    async with client(h) as http:
        sid = await new_session(http)
        received = 0
        for _ in range(10):
            body = rng.randbytes(2 * rng.randrange(1, 8000))
            while (r := await http.post(f"/v1/sessions/{sid}/audio", content=body, headers=PCM)).status_code == 429:
                await asyncio.sleep(0.1)  # the 2 s ring is full: buffer_full, as documented; wait as a client should
            assert r.status_code == 200, r.text
            received += len(body) // 2
            assert r.json()["samples_received"] == received
        events = asyncio.create_task(collect(ParastreamClientOn(http), sid))
        assert (await http.post(f"/v1/sessions/{sid}/close")).status_code == 200
        assert (await asyncio.wait_for(events, TIMEOUT))[-1].type == "final"


@case
async def rest_json_huge(h: Hostile) -> None:
    """A 3 MB JSON first message (the options): refused, 422 (the hotwords are too long) or 413."""
    async with client(h) as http:
        body = b'{"hotwords": "' + b"a" * 3_000_000 + b'"}'
        assert_error(await http.post("/v1/sessions", content=body, headers={"Content-Type": "application/json"}), (413, 422))


@case
async def rest_json_nested_or_not_json(h: Hostile) -> None:
    """JSON nested 100,000 deep, a 5,000-digit number, half an object, a bare string: 400 or 422 (413 for the deep
    ones, which are over app/body.py's MAX_JSON_BYTES before their depth matters)."""
    bodies = [b"[" * 100_000, b"{\"a\":" * 50_000, b'{"sample_rate": ' + b"1" * 5000 + b"}", b'{"sample_rate": ', b'"x"']
    async with client(h) as http:
        for body in bodies:
            assert_error(await http.post("/v1/sessions", content=body, headers={"Content-Type": "application/json"}), (400, 413, 422))


@case
async def rest_huge_content_length_on_append(h: Hostile) -> None:
    """Content-Length: 10^12 over a 2-byte body: 413 at once, by the declared length, without waiting for a body."""
    async with client(h) as http:
        sid = await new_session(http)
        request = (
            f"POST /v1/sessions/{sid}/audio HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: 1000000000000\r\n\r\n\x00\x00"
        ).encode()
        response = await raw(h, request, timeout=5)
        assert status_of(response) == 413 and body_of(response)["error"]["code"] == "payload_too_large"
        assert (await http.get(f"/v1/sessions/{sid}")).json()["samples_received"] == 0
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204


@case
async def rest_huge_content_length_on_json(h: Hostile) -> None:
    """The same lie on `POST /v1/sessions` (JSON bodies: app/body.py's MAX_JSON_BYTES): a clear 413 at once, not a
    connection held open waiting for a terabyte."""
    request = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{}"
    response = await raw(h, request, timeout=5)
    assert status_of(response) == 413, response[:300]


@case
async def rest_huge_content_length_on_upload(h: Hostile) -> None:
    request = (
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 1000000000000\r\n\r\n--b\r\n"
    )
    response = await raw(h, request, timeout=5)
    assert status_of(response) == 413 and body_of(response)["error"]["code"] == "payload_too_large"


@case
async def rest_trickled_body(h: Hostile) -> None:
    """An append whose body comes 64 bytes every 40 ms (1.6 s): applied whole once it is all there."""
    async with client(h) as http:
        sid = await new_session(http)
        body = synth_speechlike(0.1, seed=1403).astype("<i2").tobytes()
        head = f"POST /v1/sessions/{sid}/audio HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            writer.write(head.encode())
            for start in range(0, len(body), 64):
                writer.write(body[start : start + 64])
                await writer.drain()
                await asyncio.sleep(0.04)
            response = await asyncio.wait_for(read_response(reader), 10)
        finally:
            writer.close()
        assert status_of(response) == 200 and body_of(response)["samples_received"] == len(body) // 2
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204


@case
async def rest_stalled_bodies(h: Hostile) -> None:
    """Twenty appends, five uploads and five session options that send half their body and stall: the server waits
    for them (HTTP cannot answer a body it has not read), serves everyone else meanwhile, and lets go of each the
    moment its client leaves. (A client leaving mid-body was a 500 with a traceback: now a quiet 499 in the log.)"""
    async with client(h) as http:
        sid = await new_session(http)
        heads = [
            f"POST /v1/sessions/{sid}/audio HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 6400\r\n\r\n".encode()
            + bytes(3200)
        ] * 20 + [
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 100000\r\n\r\n".encode()
            + file_part(bytes(50_000))[:50_000]
        ] * 5 + [b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"mode\":"] * 5
        stalled = [await asyncio.open_connection("127.0.0.1", h.port) for _ in heads]
        for (_, writer), head in zip(stalled, heads):
            writer.write(head)
        await asyncio.sleep(2)
        assert (await http.get("/healthz")).status_code == 200
        for _, writer in stalled:
            writer.transport.abort()
        assert (await http.get(f"/v1/sessions/{sid}")).json()["samples_received"] == 0  # nothing half-applied
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204


@case
async def rest_slowloris_headers(h: Hostile) -> None:
    """Slowloris: 20 connections trickle a request's headers a byte every 40 ms (about 2 s each) while the bystander
    streams; each is answered once its headers are complete. Twenty more stall mid-header and are dropped. uvicorn
    (h11) has no header timeout: a stalled connection holds a descriptor until its client leaves (docs/operations.md)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: yes\r\n\r\n"
    stalled = [await asyncio.open_connection("127.0.0.1", h.port) for _ in range(20)]
    for _, writer in stalled:
        writer.write(request[:20])
    answers = await asyncio.gather(*[raw(h, request, trickle_s=0.04) for _ in range(20)])
    assert all(status_of(a) == 200 and body_of(a) == {"status": "ok"} for a in answers)
    for _, writer in stalled:
        writer.transport.abort()


@case
async def rest_not_http(h: Hostile) -> None:
    """What is not HTTP/1.1 gets uvicorn's 400 and a closed connection: random bytes, a bare word, HTTP/0.9, a NUL in
    the path, a negative or non-numeric Content-Length, a broken chunk size, a 100 kB header line."""
    rng = random.Random(1404)
    junk = [
        rng.randbytes(1000) + b"\r\n\r\n",  # without an end of headers h11 waits for one, as for a slow client
        b"GARBAGE\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET /v1/sessions/a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for data in junk:
        response = await raw(h, data)
        assert status_of(response) == 400, (data[:60], response[:200])
    big = await raw(h, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert status_of(big) in (200, 400, 431)


def ids() -> list[str]:
    """Session ids no session has: 10 kB long, unicode (right-to-left override included), NUL, dot segments."""
    return ["a" * 10_000, "你好\u202e", "a\x00b", "..", "%2e%2e", " ", "\U0001f600" * 100]


@case
async def rest_hostile_ids(h: Hostile) -> None:
    """Every route with a session id answers each hostile id 404 session_not_found (or, for a route that cannot
    match it, the JSON 404 or 405): never a 5xx, never another session."""
    async with client(h) as http:
        for sid in ids():
            for method, path in [
                ("GET", "/v1/sessions/{}"),
                ("DELETE", "/v1/sessions/{}"),
                ("POST", "/v1/sessions/{}/close"),
                ("POST", "/v1/sessions/{}/migrate"),
                ("GET", "/v1/sessions/{}/events"),
                ("POST", "/v1/sessions/{}/audio"),
            ]:
                url = path.format(quote(sid, safe=""))
                r = await http.request(method, url, content=b"\x00\x00", headers=PCM if "audio" in path else None)
                assert_error(r, (404, 405, 422))


@case
async def rest_hostile_offsets(h: Hostile) -> None:
    """`offset`: negative, non-numeric, fractional, hex, superscript, 5,000 digits: 422; past the end (10^30): 409
    offset_gap saying where to resume. None of them changes the session."""
    async with client(h) as http:
        sid = await new_session(http)
        for offset in ["-1", "-1" + "0" * 30, "abc", "1.5", "", "0x10", "²", "1" * 5000, "1e3", "NaN"]:
            r = await http.post(f"/v1/sessions/{sid}/audio", params={"offset": offset}, content=b"\x00\x00", headers=PCM)
            assert_error(r, 422, "invalid_request")
        r = await http.post(f"/v1/sessions/{sid}/audio", params={"offset": str(10**30)}, content=b"\x00\x00", headers=PCM)
        assert assert_error(r, 409, "offset_gap")["expected_offset"] == 0
        assert (await http.get(f"/v1/sessions/{sid}")).json()["samples_received"] == 0
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204


@case
async def rest_bad_appends(h: Hostile) -> None:
    """Empty and odd bodies (400), other content types (415), a chunked body over the limit (413, read no further)."""
    async with client(h) as http:
        sid = await new_session(http)
        assert_error(await http.post(f"/v1/sessions/{sid}/audio", content=b"", headers=PCM), 400, "invalid_audio")
        assert_error(await http.post(f"/v1/sessions/{sid}/audio", content=b"\x00" * 3, headers=PCM), 400, "invalid_audio")
        for ctype in ["text/plain", "application/json", "", "application/octet-stream\x7f"]:
            r = await http.post(f"/v1/sessions/{sid}/audio", content=b"\x00\x00", headers={"Content-Type": ctype})
            assert_error(r, 415, "unsupported_media_type")
        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield bytes(32_000)

        assert_error(await http.post(f"/v1/sessions/{sid}/audio", content=chunked(), headers=PCM), 413, "payload_too_large")
        assert (await http.get(f"/v1/sessions/{sid}")).json()["samples_received"] == 0
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204


# SSE ----------------------------------------------------------------------------------------------------------


@case
async def sse_garbage_last_event_id(h: Hostile) -> None:
    """A Last-Event-ID that is no event id: 400 invalid_last_event_id. "²" passes str.isdigit() and 5,000 digits
    pass it too; int() refuses both, which was a 500."""
    async with client(h) as http:
        sid = await new_session(http)
        for value in [b"x", b"-1", b"1.5", b"0x10", b"\xb2", b"1" * 5000, b"\xd9\xa1", b"1 2", b"1" * 30]:
            r = await http.get(f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": value})
            assert_error(r, 400, "invalid_last_event_id")
        assert_error(await http.get(f"/v1/sessions/{sid}/events", params={"progress": "maybe"}), 422)
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204


@case
async def sse_subscribers_that_vanish(h: Hostile) -> None:
    """Fifty subscribers open a session's stream and drop their sockets without a word; a resume point past the end
    of a finished session's history is an empty stream, not a wait. Their connections are all let go."""
    async with client(h) as http:
        sid = await new_session(http)
        request = f"GET /v1/sessions/{sid}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
        conns = [await asyncio.open_connection("127.0.0.1", h.port) for _ in range(50)]
        for _, writer in conns:
            writer.write(request)
        for reader, _ in conns:
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
        for _, writer in conns:
            writer.transport.abort()
        assert (await http.post(f"/v1/sessions/{sid}/close")).status_code == 200
        events = await asyncio.wait_for(collect(ParastreamClientOn(http), sid), TIMEOUT)
        assert events[-1].type == "final"
        r = await http.get(f"/v1/sessions/{sid}/events", headers={"Last-Event-ID": "999999"}, timeout=10)
        assert r.status_code == 200 and "event:" not in r.text


# FunASR's WebSocket -------------------------------------------------------------------------------------------


async def funasr_refused(h: Hostile, *messages: str | bytes) -> tuple[list[dict[str, Any]], int, str]:
    """Send `messages` on a fresh connection; the messages it got and the close code and reason."""
    async with websockets.connect(h.ws + "/", max_size=None) as ws:
        for m in messages:
            await ws.send(m)
        got = []
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
        assert ws.close_code is not None
        return got, ws.close_code, ws.close_reason or ""


def assert_refused(got: list[dict[str, Any]], code: int, reason: str, expected: int, says: str = "") -> None:
    assert code == expected and reason and says in reason, (code, reason)
    if code != 1009:  # a message too big is refused by the socket itself, before any JSON
        assert got and got[-1]["is_end"] is True and got[-1]["error"] and "mode" in got[-1], got


async def funasr_final(ws: ClientConnection) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while not got or not got[-1]["is_final"]:
        got.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
    return got


@case
async def funasr_binary_before_config(h: Hostile) -> None:
    got, code, reason = await funasr_refused(h, b"\x00\x01" * 500)
    assert_refused(got, code, reason, 1003, "first message must be JSON")


@case
async def funasr_not_json(h: Hostile) -> None:
    for text in ["hello", "[1, 2]", "", "null", "{\"is_speaking\": tru"]:
        got, code, reason = await funasr_refused(h, text)
        assert_refused(got, code, reason, 1008, "JSON object")


@case
async def funasr_json_nested_or_long_numbers(h: Hostile) -> None:
    """Nesting past the parser's stack and 5,000-digit numbers were 1011 "internal error": now 1008 saying why."""
    for text in ["[" * 100_000, '{"a": ' * 50_000, '{"audio_fs": ' + "1" * 5000 + "}"]:
        got, code, reason = await funasr_refused(h, text)
        assert_refused(got, code, reason, 1008, "JSON object")


@case
async def funasr_json_huge(h: Hostile) -> None:
    """A 2 MB first message, over PARASTREAM_MAX_WS_MESSAGE_BYTES (1 MiB): closed 1009 with a reason, not read."""
    got, code, reason = await funasr_refused(h, json.dumps({"mode": "online", "x": "a" * 2_000_000}))
    assert_refused(got, code, reason, 1009)


@case
async def funasr_bad_numbers(h: Hostile) -> None:
    """Numbers as strings that str.isdigit() takes and int() does not ("²", "--5", 5,000 digits) were 1011: now
    1008 naming the field. Numbers out of range are refused the same way."""
    for first, field in [
        ({"audio_fs": "²"}, "audio_fs"),
        ({"encoder_chunk_look_back": "--5"}, "encoder_chunk_look_back"),
        ({"decoder_chunk_look_back": "1" * 5000}, "decoder_chunk_look_back"),
        ({"chunk_size": "5,²,5"}, "chunk_size"),
        ({"chunk_size": [0, 10**100, 5]}, "chunk_size"),
        ({"audio_fs": 10**100, "is_speaking": True}, "sample_rate"),
        ({"audio_fs": -16000, "is_speaking": True}, "sample_rate"),
    ]:
        got, code, reason = await funasr_refused(h, json.dumps({"mode": "online", **first}))
        assert_refused(got, code, reason, 1008, field)


FUNASR_KEYS = ["mode", "chunk_size", "encoder_chunk_look_back", "decoder_chunk_look_back", "wav_name", "wav_format",
               "audio_fs", "hotwords", "is_speaking", "is_finished", "is_end", "chunk_interval", "itn"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    makers: list[Callable[[], Any]] = [
        lambda: None, lambda: True, lambda: False, lambda: rng.randint(-10**6, 10**6), lambda: 10 ** rng.randint(1, 400),
        lambda: rng.random() * 1e6, lambda: "", lambda: "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(8))),
        lambda: "5,10,5", lambda: str(rng.randint(-100, 100_000)), lambda: rng.choice(["online", "2pass", "offline", "pcm", "wav"]),
        lambda: [random_value(rng, depth + 1) for _ in range(rng.randrange(4))],
        lambda: {"a": random_value(rng, depth + 1)},
    ]
    return makers[rng.randrange(len(makers) if depth < 3 else len(makers) - 2)]()


@case
async def funasr_random_first_messages(h: Hostile) -> None:
    """Thirty random JSON objects of the protocol's own keys with random values, each on its own connection, then
    the end of audio: either refused (1003 or 1008, with an error message and a reason) or taken (one final)."""
    rng = random.Random(1405)
    for _ in range(30):
        first = {k: random_value(rng) for k in rng.sample(FUNASR_KEYS, rng.randrange(1, len(FUNASR_KEYS)))}
        async with websockets.connect(h.ws + "/", max_size=None) as ws:
            await ws.send(json.dumps(first))
            await ws.send(json.dumps({"is_speaking": False}))
            got: list[dict[str, Any]] = []
            with contextlib.suppress(websockets.ConnectionClosed):
                while not got or not got[-1]["is_final"]:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            if ws.close_code is not None:
                assert_refused(got, ws.close_code, ws.close_reason or "", ws.close_code)
                assert ws.close_code in (1003, 1008), (first, ws.close_code, ws.close_reason)
            else:
                assert got[-1]["is_final"] is True and got[-1]["is_end"] is True, (first, got)


@case
async def funasr_random_frames(h: Hostile) -> None:
    """Random binary frames of random sizes are audio (any bytes are PCM): the utterance ends with its final. Then
    a random text frame mid-utterance: 1008 with a reason, and the utterance's session is aborted."""
    rng = random.Random(1406)
    async with websockets.connect(h.ws + "/", max_size=None) as ws:
        await ws.send(json.dumps({"mode": "online", "wav_name": "noise", "is_speaking": True}))
        for _ in range(50):
            await ws.send(rng.randbytes(rng.randrange(1, 5000)))
        await ws.send(json.dumps({"is_speaking": False}))
        assert (await funasr_final(ws))[-1]["wav_name"] == "noise"
        await ws.send(rng.randbytes(3000))  # the next utterance
        await ws.send(rng.randbytes(100).hex())  # not JSON
        got = []
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
    assert_refused(got, ws.close_code or 0, ws.close_reason or "", 1008, "JSON object")


def wav_header(data_bytes: int, rate: int = 16000, channels: int = 1, bits: int = 16, riff: int | None = None) -> bytes:
    riff_size = min(36 + data_bytes, 0xFFFFFFFF) if riff is None else riff
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", min(data_bytes, 0xFFFFFFFF)))


@case
async def funasr_lying_wav_header(h: Hostile) -> None:
    """FunASR's HTML5 page sends a WAV file's header as if it were audio. One claiming 24 hours (and a RIFF size of
    4 GB) over 1 s of PCM is skipped like an honest one: the same messages. One that says stereo is refused, 1003
    with a reason, whatever its sizes claim."""
    pcm = synth_speechlike(1.0, seed=1407).astype("<i2").tobytes()

    async def utterance(header: bytes) -> list[dict[str, Any]]:
        async with websockets.connect(h.ws + "/") as ws:
            await ws.send(json.dumps({"mode": "online", "wav_name": "w", "wav_format": "PCM", "is_speaking": True}))
            data = header + pcm
            for start in range(0, len(data), 960):
                await ws.send(data[start : start + 960])
            await ws.send(json.dumps({"is_speaking": False}))
            return await funasr_final(ws)

    honest = await utterance(wav_header(len(pcm)))
    assert await utterance(wav_header(24 * 3600 * 32000, riff=0xFFFFFFFF)) == honest
    got, code, reason = await funasr_refused(
        h, json.dumps({"mode": "online", "is_speaking": True}), wav_header(24 * 3600 * 32000, channels=2) + pcm[:900]
    )
    assert_refused(got, code, reason, 1003, "16-bit mono PCM")


@case
async def funasr_hostile_names(h: Hostile) -> None:
    """A wav_name of 10 kB is refused (1008); one with NUL, unicode and a right-to-left override is echoed exactly."""
    got, code, reason = await funasr_refused(h, json.dumps({"wav_name": "a" * 10_000, "is_speaking": True}))
    assert_refused(got, code, reason, 1008, "wav_name")
    name = "a\x00你好\u202e\U0001f600"
    async with websockets.connect(h.ws + "/") as ws:
        await ws.send(json.dumps({"mode": "online", "wav_name": name, "is_speaking": True}))
        await ws.send(bytes(6400))
        await ws.send(json.dumps({"is_speaking": False}))
        assert {m["wav_name"] for m in await funasr_final(ws)} == {name}


async def trickled_handshake(h: Hostile, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket upgrade request sent a byte every 10 ms (about 1.7 s); returns once 101 came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    for byte in request:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.01)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame (payload under 64 kB)."""
    mask = os.urandom(4)
    length = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    return bytes([0x80 | opcode]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_ws_text(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), 15)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack(">H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack(">Q", await reader.readexactly(8))[0]
    return first & 0x0F, await reader.readexactly(length)


@case
async def funasr_trickled_handshake(h: Hostile) -> None:
    """The upgrade request trickled in: 101 once complete; the connection then works (an utterance without audio
    gets its one final message)."""
    reader, writer = await trickled_handshake(h, "/")
    try:
        writer.write(ws_frame(json.dumps({"mode": "online", "wav_name": "slow", "is_speaking": True}).encode()))
        writer.write(ws_frame(json.dumps({"is_speaking": False}).encode()))
        opcode, payload = await read_ws_text(reader)
        message = json.loads(payload)
        assert opcode == 1 and message["wav_name"] == "slow" and message["is_final"] is True
    finally:
        writer.transport.abort()


# OpenAI realtime ----------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def realtime(h: Hostile) -> AsyncIterator[ClientConnection]:
    async with websockets.connect(h.ws + "/v1/realtime", max_size=None) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "session.created"
        yield ws


async def next_event(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 15))
    return event


async def assert_error_event(ws: ClientConnection, code: str | None = None) -> dict[str, Any]:
    event = await next_event(ws)
    assert event["type"] == "error" and event["error"]["message"], event
    if code is not None:
        assert event["error"]["code"] == code, event
    return event


async def still_serves(ws: ClientConnection) -> None:
    """The connection is up and answers: an update is answered with the session (transcription events of audio
    committed before may come first)."""
    await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription"}}))
    while (event := await next_event(ws))["type"] != "session.updated":
        assert event["type"] != "error" and event["type"].startswith(("conversation.item.", "input_audio_buffer.")), event


@case
async def realtime_not_json(h: Hostile) -> None:
    """Not JSON, not an object, a binary frame: an error event each; the connection stays up."""
    async with realtime(h) as ws:
        for message in ["hello", "[1, 2]", "null", "", b"\x00\x01\x02"]:
            await ws.send(message)
            await assert_error_event(ws)
        await still_serves(ws)


@case
async def realtime_json_nested_or_long_numbers(h: Hostile) -> None:
    """Nesting past the parser's stack and 5,000-digit numbers took the connection down (1006, no close frame): now
    an error event `invalid_json`, and the connection stays up."""
    async with realtime(h) as ws:
        for message in ["[" * 100_000, '{"type": ' * 50_000, '{"type": ' + "1" * 5000 + "}"]:
            await ws.send(message)
            await assert_error_event(ws, "invalid_json")
        await still_serves(ws)


@case
async def realtime_json_huge(h: Hostile) -> None:
    """A 2 MB event, over PARASTREAM_MAX_WS_MESSAGE_BYTES (1 MiB): closed 1009 with a reason."""
    async with realtime(h) as ws:
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 2_000_000}))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 15)
        assert ws.close_code == 1009 and ws.close_reason, (ws.close_code, ws.close_reason)


RT_TYPES = ["session.update", "transcription_session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
            "input_audio_buffer.clear", "response.create", "conversation.item.create"]


def random_event(rng: random.Random) -> dict[str, Any]:
    event: dict[str, Any] = {"type": rng.choice(RT_TYPES)}
    if rng.random() < 0.5:
        event["event_id"] = random_value(rng)
    if event["type"].endswith("update"):
        session: dict[str, Any] = {k: random_value(rng) for k in ["type", "input_audio_format", "turn_detection"] if rng.random() < 0.5}
        fields = ["model", "language", "prompt", "keywords", "type", "rate"]
        if rng.random() < 0.6:
            session["audio"] = {"input": {k: random_value(rng) if rng.random() < 0.4 else {f: random_value(rng) for f in fields if rng.random() < 0.6}
                                          for k in ["format", "transcription", "turn_detection"] if rng.random() < 0.7}}
        if rng.random() < 0.3:
            session["input_audio_transcription"] = {f: random_value(rng) for f in fields if rng.random() < 0.6}
        event["session"] = session if rng.random() < 0.9 else random_value(rng)
    elif event["type"].endswith("append"):
        event["audio"] = random_value(rng) if rng.random() < 0.5 else base64.b64encode(rng.randbytes(2 * rng.randrange(0, 2400))).decode()
    return event


ANSWERS = {
    "error", "session.updated", "transcription_session.updated", "input_audio_buffer.cleared",
    "input_audio_buffer.committed", "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
}


@case
async def realtime_random_events(h: Hostile) -> None:
    """Sixty random events of the protocol's own types with random fields on one connection: each is taken (an
    update answered with the session, an append quietly, a clear with `cleared`) or answered with an error event;
    the connection never drops, and still serves after."""
    rng = random.Random(1408)
    async with realtime(h) as ws:
        for _ in range(60):
            event = random_event(rng)
            await ws.send(json.dumps(event))
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await ws.send("{}")  # the marker: an error event after everything above
        while True:  # until the marker's error: only the random events have a type
            answer = await next_event(ws)
            assert answer["type"] in ANSWERS, answer
            if answer["type"] == "error" and answer["error"]["code"] == "unsupported_event" and "None" in answer["error"]["message"]:
                break
        await still_serves(ws)


@case
async def realtime_bad_audio(h: Hostile) -> None:
    """Audio that is not base64, odd bytes, a list, a number; then random PCM (valid), cleared: `cleared`."""
    async with realtime(h) as ws:
        for audio in ["!!!", base64.b64encode(b"\x00\x01\x02").decode(), [1, 2], 7, None, "A" * 7]:
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            await assert_error_event(ws)
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(random.Random(1409).randbytes(48_000)).decode()}))
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        while (event := await next_event(ws))["type"] != "input_audio_buffer.cleared":
            assert event["type"] != "error", event
        await still_serves(ws)


@case
async def realtime_trickled_handshake(h: Hostile) -> None:
    reader, writer = await trickled_handshake(h, "/v1/realtime?intent=transcription")
    try:
        opcode, payload = await read_ws_text(reader)
        assert opcode == 1 and json.loads(payload)["type"] == "session.created"
    finally:
        writer.transport.abort()


# OpenAI's file endpoint ---------------------------------------------------------------------------------------

BOUNDARY = "hostile-boundary"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def file_part(data: bytes, extra_headers: bytes = b"") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="clip.wav"\r\n'.encode()
        + extra_headers + b"\r\n" + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@case
async def upload_24_hours_streamed(h: Hostile) -> None:
    """A WAV header claiming 24 hours, then its data streamed from a generator (chunked, no Content-Length), past
    PARASTREAM_MAX_UPLOAD_BYTES (5 MB here): a readable 413 in OpenAI's shape, not a reset connection. The same
    with a Content-Length declared."""
    day = 24 * 3600 * 16000 * 2

    def parts(limit: int) -> Iterator[bytes]:
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'.encode()
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="day.wav"\r\n\r\n'.encode()
        yield wav_header(day)
        for _ in range(limit // 64_000):
            yield bytes(64_000)

    async def streamed() -> AsyncIterator[bytes]:
        for part in parts(50_000_000):
            yield part

    async with client(h) as http:
        r = await http.post("/v1/audio/transcriptions", content=streamed(), headers=MULTIPART)
        assert assert_error(r, 413, "payload_too_large")["type"] == "invalid_request_error"
        whole = b"".join(parts(8_000_000))
        assert_error(await http.post("/v1/audio/transcriptions", content=whole, headers=MULTIPART), 413, "payload_too_large")


@case
async def upload_lying_wav_header(h: Hostile) -> None:
    """A WAV header that claims 24 hours (and 4 GB of RIFF) over 1 s of PCM: the audio that is there, transcribed,
    as the honest file is. One that claims 8 channels of 32 bits over it is 0.06 s of audio: 400 audio_too_short; a
    sample rate or a channel count of 0: 415."""
    pcm = synth_speechlike(1.0, seed=1410).astype("<i2").tobytes()
    async with client(h) as http:
        honest = await http.post("/v1/audio/transcriptions", content=file_part(wav_header(len(pcm)) + pcm), headers=MULTIPART)
        assert honest.status_code == 200, honest.text
        lying = await http.post(
            "/v1/audio/transcriptions", content=file_part(wav_header(24 * 3600 * 32000, riff=0xFFFFFFFF) + pcm), headers=MULTIPART
        )
        assert lying.status_code == 200 and lying.json() == honest.json(), lying.text
        r = await http.post("/v1/audio/transcriptions", content=file_part(wav_header(len(pcm), channels=8, bits=32) + pcm), headers=MULTIPART)
        assert_error(r, 400, "audio_too_short")
        for header in [wav_header(len(pcm), rate=0), wav_header(len(pcm), channels=0), wav_header(len(pcm))[:20]]:
            r = await http.post("/v1/audio/transcriptions", content=file_part(header + pcm), headers=MULTIPART)
            assert_error(r, 415, "unsupported_audio_format")


@case
async def upload_lying_multipart(h: Hostile) -> None:
    """Multipart parts are delimited by the boundary: a part's own Content-Length, too large or too small, changes
    nothing (the same transcript). A body cut before its closing boundary, random bytes, no boundary, a 5,000-byte
    boundary, 2,000 fields, 20 files, a file where a text field goes, a body that is not multipart: each a 4xx."""
    pcm = synth_speechlike(0.5, seed=1411).astype("<i2").tobytes()
    wav = wav_header(len(pcm)) + pcm
    rng = random.Random(1412)
    async with client(h) as http:
        honest = (await http.post("/v1/audio/transcriptions", content=file_part(wav), headers=MULTIPART)).json()
        for lie in [b"Content-Length: 99999999\r\n", b"Content-Length: 3\r\n", b"Content-Length: -1\r\n"]:
            r = await http.post("/v1/audio/transcriptions", content=file_part(wav, lie), headers=MULTIPART)
            assert r.status_code == 200 and r.json() == honest, r.text
        refusals: list[tuple[bytes, dict[str, str], int]] = [
            (file_part(wav)[: -len(f"\r\n--{BOUNDARY}--\r\n")], MULTIPART, 400),
            (rng.randbytes(3000), MULTIPART, 400),
            (file_part(wav), {"Content-Type": "multipart/form-data"}, 400),
            (file_part(wav), {"Content-Type": "multipart/form-data; boundary=" + "x" * 5000}, 400),
            (b"".join(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'.encode() for i in range(2000))
             + f"--{BOUNDARY}--\r\n".encode(), MULTIPART, 400),
            (b"".join(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{i}"\r\n\r\nx\r\n'.encode() for i in range(20))
             + f"--{BOUNDARY}--\r\n".encode(), MULTIPART, 400),
            (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"; filename="m"\r\n\r\nx\r\n--{BOUNDARY}--\r\n'.encode(), MULTIPART, 400),
            (b"{}", {"Content-Type": "application/json"}, 415),
            (file_part(rng.randbytes(5000)), MULTIPART, 415),
            (file_part(b"fLaC" + rng.randbytes(2000)), MULTIPART, 415),
        ]
        for body, headers, status in refusals:
            assert_error(await http.post("/v1/audio/transcriptions", content=body, headers=headers), status)


# Floods -------------------------------------------------------------------------------------------------------


@case
async def flood_1000_sessions_never_used(h: Hostile) -> None:
    """1,000 sessions opened over 8 keep-alive connections and never used: all admitted (PARASTREAM_MAX_SESSIONS is
    1,100 here), the bystander unaffected, and every one closed by the idle timeout (4 s) with its ring freed: the
    leak checks after the case wait for that."""
    async with httpx.AsyncClient(base_url=h.url, timeout=60, limits=httpx.Limits(max_connections=8)) as http:
        gate = asyncio.Semaphore(8)

        async def one() -> int:
            async with gate:
                return (await http.post("/v1/sessions", json={})).status_code

        codes = await asyncio.gather(*[one() for _ in range(1000)])
    assert codes == [201] * 1000, {c: codes.count(c) for c in set(codes)}


@case
async def flood_200_silent_websockets(h: Hostile) -> None:
    """100 FunASR and 100 OpenAI realtime WebSockets opened and left silent past the idle timeout while the
    bystander streams: FunASR's are closed by the server, 1000 with a reason naming the timeout; OpenAI's hold no
    session and stay up, still serving; then all go, and every descriptor with them (the checks after the case)."""
    funasr = await asyncio.gather(*[websockets.connect(h.ws + "/") for _ in range(100)])
    openai = await asyncio.gather(*[websockets.connect(h.ws + "/v1/realtime") for _ in range(100)])
    try:
        for ws in openai:
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "session.created"
        await asyncio.sleep(SETTINGS["session_idle_timeout_s"] + 1.5)
        for ws in funasr:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1000 and "PARASTREAM_SESSION_IDLE_TIMEOUT_S" in (ws.close_reason or "")
        await asyncio.gather(*[still_serves(ws) for ws in openai[:10]])
    finally:
        await asyncio.gather(*[ws.close() for ws in funasr + openai], return_exceptions=True)


# --- the test -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_hostile(hostile: Hostile, name: str) -> None:
    h = hostile
    t0 = time.monotonic()
    try:
        h.bystander.resume()
        asyncio.run(asyncio.wait_for(CASES[name](h), TIMEOUT))
    finally:
        t1 = time.monotonic()
        h.bystander.pause()
    runs = h.bystander.exact_during(t0, t1)
    assert runs and all(r.ok for r in runs), [r.detail for r in runs if not r.ok] or "no bystander session ran"
    assert_nothing_left(h)


def assert_nothing_left(h: Hostile) -> None:
    """Up and ready; no session open, no ring, no descriptor beyond the quiet count; no traceback in the log."""
    assert httpx.get(f"{h.url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{h.url}/readyz", timeout=10).status_code == 200
    settle(lambda: sessions_open(h.url), lambda n: n == 0, 30, "sessions open")
    settle(lambda: segments_of(h.svc.pid), lambda names: names == [], 10, "rings and snapshots in /dev/shm")
    settle(lambda: fd_count(h.svc.pid), lambda n: n <= h.fds + FD_SLACK, 15, f"descriptors of the API process (quiet: {h.fds})")
    log = h.svc.log(tail=10**9)
    new, h.log_at = log[h.log_at :], len(log)
    assert "Traceback" not in new, new[-5000:]


def test_enough_cases() -> None:
    assert len(CASES) >= 30


def test_a_snapshot_saved_after_its_session_was_aborted_is_not_left() -> None:
    """The leak the realtime cases found: a session aborted while its worker ran its first stride (a client that
    clears, drops or DELETEs at once). The API process unlinks the ring and the snapshots it sees; the worker then
    saves the stride's snapshot into a new segment, which nobody would remove until the service stops. The worker
    now looks for the ring after making a segment, and removes its own when the ring is gone."""
    from engine.ring import RingReader, RingWriter, list_segments
    from engine.worker.snapshot import SnapshotStore

    writer = RingWriter.create(16_000)
    reader = RingReader.attach(writer.name)
    store = SnapshotStore(reader)
    try:
        writer.unlink()  # the abort, in the API process
        store.save(9600, 3, ("a", "b", "c"), {"cache": np.zeros(4, np.float32)})  # the stride in flight ends
        assert [n for n in list_segments() if n.startswith(writer.name)] == []
    finally:
        store.close()
        reader.close()
