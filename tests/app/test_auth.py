"""API keys, session ownership and CORS (app/auth.py, docs/operations.md).

One service for the module, its API keys from an `@path` file and its admin keys comma-separated, with one CORS
origin: every /v1 route (found from the app's own routes, so a new one cannot slip by) and both WebSockets refuse a
missing or wrong key; probes and the page stay open; another key's session answers 404 exactly as an unknown id, on
every route, including sessions made through FunASR's WebSocket; the SDKs work with a key; no key reaches the log.
What needs other settings (no keys, a public /metrics, no CORS) or only the wiring (each door's owner) runs
in-process on create_app with a stand-in engine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import websockets
from fastapi.testclient import TestClient
from openai import AsyncOpenAI, OpenAI

from app import auth
from app.main import create_app
from app.sdk import APIError, Client, FinalEvent
from benchmarks.common import free_port
from engine.errors import ServiceFull, SessionNotFound
from engine.settings import Settings
from tests.app.test_openai import wav
from tests.audio import synth_speechlike
from tests.harness import CLEAN_EXIT, ROOT, ServiceProcess

K1, K2, K3 = "key-alpha-7f3c", "key-beta-91ab", "key-gamma-0c44"  # K1 and K2 on one line of the file, K3 alone
ADMIN, ADMIN2 = "key-admin-5d20", "key-ops-3e61"
KEYS = (K1, K2, K3, ADMIN, ADMIN2)
ALLOWED = "http://allowed.example"
PCM = {"Content-Type": "application/octet-stream"}
UNKNOWN = "0" * 32
PARASTREAM_401 = {"error": {"code": "unauthorized", "message": auth.UNAUTHORIZED}}
OPENAI_401 = {
    "error": {"message": auth.UNAUTHORIZED, "type": "invalid_request_error", "param": None, "code": "unauthorized"}
}
FORBIDDEN = {"error": {"code": "forbidden", "message": auth.FORBIDDEN}}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    keyfile = tmp_path_factory.mktemp("keys") / "api-keys"
    keyfile.write_text(f"# Parastream API keys\n{K1}, {K2}\n\n  {K3}\n")
    admins = f"{ADMIN}, {ADMIN2}"
    with ServiceProcess(model_dir, api_keys=f"@{keyfile}", admin_keys=admins, cors_origins=ALLOWED) as svc:
        yield svc
    assert svc.proc is not None and svc.proc.returncode in CLEAN_EXIT, svc.log()
    log = Path(svc._log.name).read_text(errors="replace")
    assert not [key for key in KEYS if key in log], "an API key was logged"
    svc.remove_log()


@pytest.fixture(scope="module")
def http(keyed: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed.base_url, timeout=30) as client:
        yield client


def create(http: httpx.Client, key: str) -> str:
    answer = http.post("/v1/sessions", headers=bearer(key))
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def v1_routes() -> list[tuple[str, str, bool]]:
    """(method, path, OpenAI-shaped errors) of every HTTP route under /v1 the app serves, from its OpenAPI schema."""
    paths = create_app(Settings(_env_file=None)).openapi()["paths"]
    return [
        (method.upper(), path, "openai" in operation.get("tags", []))
        for path, operations in paths.items()
        if path.startswith("/v1")
        for method, operation in operations.items()
    ]


# --- 401 and 403 -----------------------------------------------------------------------------------------------


def test_every_v1_route_refuses_a_missing_or_wrong_key(http: httpx.Client) -> None:
    """The same 401 body, with WWW-Authenticate, for no key, a wrong one, another scheme, and `?api_key=` (taken on
    the event stream only); OpenAI's routes in OpenAI's error shape."""
    routes = v1_routes()
    must = {
        ("POST", "/v1/sessions"), ("GET", "/v1/sessions/{session_id}"), ("DELETE", "/v1/sessions/{session_id}"),
        ("POST", "/v1/sessions/{session_id}/audio"), ("POST", "/v1/sessions/{session_id}/close"),
        ("POST", "/v1/sessions/{session_id}/migrate"), ("GET", "/v1/sessions/{session_id}/events"),
        ("GET", "/v1/workers"), ("GET", "/v1/models"), ("POST", "/v1/audio/transcriptions"),
    }
    assert must <= {(method, path) for method, path, _ in routes}
    sid = create(http, K1)
    for method, path, openai_shape in routes:
        url = re.sub(r"\{(\w+)\}", lambda m: {"session_id": sid}.get(m.group(1), "whisper-1"), path)
        attempts: list[tuple[str, dict[str, str]]] = [
            (url, {}),
            (url, bearer("key-wrong-0000")),
            (url, bearer(K1[:-1])),
            (url, {"Authorization": "Basic " + base64.b64encode(f"{K1}:".encode()).decode()}),
            (url, {"Authorization": K1}),
        ]
        if not path.endswith("/events"):
            attempts.append((f"{url}?api_key={K1}", {}))
        for target, headers in attempts:
            answer = http.request(method, target, headers=headers)
            assert answer.status_code == 401, (method, target, headers, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json() == (OPENAI_401 if openai_shape else PARASTREAM_401), (method, target)
    assert http.get(f"/v1/sessions/{sid}", headers=bearer(K1)).json()["samples_received"] == 0  # nothing happened


def test_operator_routes_need_an_admin_key(http: httpx.Client) -> None:
    assert http.get("/v1/workers").status_code == 401
    for key in (K1, K3):
        answer = http.get("/v1/workers", headers=bearer(key))
        assert answer.status_code == 403 and answer.json() == FORBIDDEN
    for key in (ADMIN, ADMIN2):
        answer = http.get("/v1/workers", headers=bearer(key))
        assert answer.status_code == 200 and len(answer.json()) == 2
    # /metrics: an admin key, PARASTREAM_METRICS_PUBLIC being false
    assert http.get("/metrics").json() == PARASTREAM_401
    assert http.get("/metrics", headers=bearer(K1)).json() == FORBIDDEN
    answer = http.get("/metrics", headers=bearer(ADMIN))
    assert answer.status_code == 200 and "parastream_" in answer.text


def test_probes_and_the_page_are_open(http: httpx.Client) -> None:
    for path in ("/healthz", "/readyz", "/", "/static/app.js", "/static/style.css", "/openapi.json"):
        assert http.get(path).status_code == 200, path


# --- ownership ---------------------------------------------------------------------------------------------------


def test_another_keys_session_is_an_unknown_id(http: httpx.Client) -> None:
    """K2, and an admin key, get on K1's session exactly what they get for an id that does not exist: on GET, audio,
    close, events (header or ?api_key=), migrate and DELETE. K1's session is untouched, and K1 reads it to the end
    (the event stream with ?api_key=, as the page opens it)."""
    sid = create(http, K1)
    routes = [
        ("GET", "", {}), ("POST", "/audio", PCM), ("POST", "/close", {}), ("GET", "/events", {}),
        ("POST", "/migrate", {}), ("DELETE", "", {}),
    ]
    pcm = synth_speechlike(1.0, seed=71).tobytes()
    for key in (K2, ADMIN):
        for method, suffix, headers in routes:
            body = pcm if suffix == "/audio" else None
            theirs = http.request(method, f"/v1/sessions/{sid}{suffix}", headers={**headers, **bearer(key)}, content=body)
            unknown = http.request(
                method, f"/v1/sessions/{UNKNOWN}{suffix}", headers={**headers, **bearer(key)}, content=body
            )
            assert theirs.status_code == unknown.status_code == 404, (key, method, suffix)
            assert theirs.text.replace(sid, "ID") == unknown.text.replace(UNKNOWN, "ID")
            assert theirs.json() == {"error": {"code": "session_not_found", "message": f"no session {sid}"}}
            assert {k: v for k, v in theirs.headers.items() if k != "date"} == {
                k: v for k, v in unknown.headers.items() if k != "date"
            }
        answer = http.get(f"/v1/sessions/{sid}/events?api_key={key}")
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "session_not_found"

    # The owner: migrate is an operator route (403 for K1, whose session it is); an admin migrates its own sessions.
    assert http.post(f"/v1/sessions/{sid}/migrate", headers=bearer(K1)).json() == FORBIDDEN
    own = create(http, ADMIN)
    moved = http.post(f"/v1/sessions/{own}/migrate", headers=bearer(ADMIN))
    assert moved.status_code == 202, moved.text
    assert http.delete(f"/v1/sessions/{own}", headers=bearer(ADMIN)).status_code == 204

    assert http.post(f"/v1/sessions/{sid}/audio", headers={**PCM, **bearer(K1)}, content=pcm).status_code == 200
    assert http.post(f"/v1/sessions/{sid}/close", headers=bearer(K1)).status_code == 200
    stream = http.get(f"/v1/sessions/{sid}/events?api_key={K1}")
    assert stream.status_code == 200 and "event: final" in stream.text
    assert http.get(f"/v1/sessions/{sid}", headers=bearer(K1)).json()["samples_received"] == 16000
    assert create(http, K3)  # the file's last key


# --- WebSockets --------------------------------------------------------------------------------------------------


def ws_url(service: ServiceProcess, path: str = "/") -> str:
    return service.base_url.replace("http://", "ws://") + path


async def refused(url: str, **connect: Any) -> tuple[int, str, list[str | bytes]]:
    """What a refused WebSocket gets: the close code and reason, and any messages before it."""
    got: list[str | bytes] = []
    async with websockets.connect(url, **connect) as ws:
        try:
            while True:
                got.append(await asyncio.wait_for(ws.recv(), 10))
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason, got


async def funasr_utterance(url: str, pcm: np.ndarray, **connect: Any) -> list[dict[str, Any]]:
    async with websockets.connect(url, subprotocols=["binary"], **connect) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"mode": "online", "chunk_size": [5, 10, 5], "wav_name": "auth", "is_speaking": True}))
        await ws.send(pcm.tobytes())
        await ws.send(json.dumps({"is_speaking": False}))
        messages = []
        while not (messages and messages[-1]["is_final"]):
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        return messages


def funasr_sessions(service: ServiceProcess) -> list[str]:
    """The ids of the sessions FunASR's WebSocket opened, in order, from the service's log line for each."""
    return re.findall(r"FunASR WebSocket utterance \d+ of its connection is session ([0-9a-f]{32})", service.log(tail=10**7))


def test_funasr_websocket_needs_a_key_and_its_sessions_are_owned(keyed: ServiceProcess, http: httpx.Client) -> None:
    """No key, a wrong `?api_key=` or Bearer header: closed 1008 "unauthorized" with nothing sent. With `?api_key=`
    or the header it serves, and the utterance's session (its id from the service log) is that key's alone."""
    url = ws_url(keyed)
    pcm = synth_speechlike(1.2, seed=72)

    async def run() -> None:
        for target, headers in [(url, {}), (f"{url}?api_key=key-wrong", {}), (url, bearer("key-wrong"))]:
            assert await refused(target, additional_headers=headers) == (1008, "unauthorized", [])
        by_query = await funasr_utterance(f"{url}?api_key={K1}", pcm)
        by_header = await funasr_utterance(url, pcm, additional_headers=bearer(K2))
        assert by_query[-1]["is_final"] and by_header[-1]["is_final"]
        assert by_query[-1]["text"] == by_header[-1]["text"]

    before = len(funasr_sessions(keyed))
    asyncio.run(run())
    ids = funasr_sessions(keyed)[before:]
    assert len(ids) == 2, ids  # in order: K1's utterance, then K2's
    for sid, owner, other in ((ids[0], K1, K2), (ids[1], K2, K1)):
        assert http.get(f"/v1/sessions/{sid}", headers=bearer(owner)).json()["state"] == "finished"
        answer = http.get(f"/v1/sessions/{sid}", headers=bearer(other))
        assert answer.status_code == 404 and answer.json()["error"]["message"] == f"no session {sid}"


def test_openai_realtime_needs_a_key(keyed: ServiceProcess) -> None:
    """A wrong key gets an `error` event (OpenAI's form), then the close 1008; OpenAI's SDK connects with its
    api_key (Bearer), a bare client with `?api_key=` or the browser SDK's subprotocol."""
    url = ws_url(keyed, "/v1/realtime?intent=transcription")
    rate = 24_000
    pcm = synth_speechlike(1.0, seed=73, sample_rate=rate)

    async def run() -> None:
        for target, headers in [(url, {}), (f"{url}&api_key=key-wrong", {}), (url, bearer("key-wrong"))]:
            code, reason, got = await refused(target, additional_headers=headers)
            assert (code, reason, len(got)) == (1008, "unauthorized", 1)
            event = json.loads(got[0])
            assert event["type"] == "error" and event["error"]["code"] == "unauthorized"
            assert event["error"]["type"] == "invalid_request_error"

        wrong = AsyncOpenAI(base_url=keyed.base_url + "/v1", websocket_base_url=ws_url(keyed, "/v1"), api_key="nope")
        async with wrong.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            event = await asyncio.wait_for(conn.recv(), 10)
            assert event.type == "error" and event.error.code == "unauthorized"

        client = AsyncOpenAI(base_url=keyed.base_url + "/v1", websocket_base_url=ws_url(keyed, "/v1"), api_key=K1)
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            assert (await asyncio.wait_for(conn.recv(), 10)).type == "session.created"
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm.tobytes()).decode())
            await conn.input_audio_buffer.commit()
            while (event := await asyncio.wait_for(conn.recv(), 30)).type != (
                "conversation.item.input_audio_transcription.completed"
            ):
                assert event.type != "error", event

        for target, connect in [
            (f"{url}&api_key={K2}", {}),
            (url, {"subprotocols": ["realtime", auth.OPENAI_SUBPROTOCOL + K3]}),
        ]:
            async with websockets.connect(target, **connect) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"

    asyncio.run(run())


# --- the SDKs and CORS -------------------------------------------------------------------------------------------


def test_the_sdks_work_with_a_key(keyed: ServiceProcess, tmp_path: Path) -> None:
    """app.sdk with the Bearer header (the event stream's too), `parastream transcribe` with $PARASTREAM_API_KEY,
    OpenAI's SDK with its api_key; each refused without."""
    pcm = synth_speechlike(1.5, seed=74)
    with Client(keyed.base_url, headers=bearer(K1)) as client:
        events = list(client.transcribe(pcm))
    assert isinstance(events[-1], FinalEvent)

    (tmp_path / "a.wav").write_bytes(wav(pcm))
    command = [sys.executable, "-m", "app.cli", "transcribe", str(tmp_path / "a.wav"), "--url", keyed.base_url]
    for key, status in ((K2, 0), ("", 1)):
        env = {**os.environ, "PARASTREAM_API_KEY": key}
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == status, result.stderr
        assert result.stdout.strip() == (events[-1].text if status == 0 else "")
        assert status == 0 or "401 unauthorized" in result.stderr
    with Client(keyed.base_url, max_retries=0) as client, pytest.raises(APIError) as refused_sdk:
        list(client.transcribe(pcm))
    assert (refused_sdk.value.status, refused_sdk.value.code) == (401, "unauthorized")

    ours = OpenAI(base_url=keyed.base_url + "/v1", api_key=K1, max_retries=0)
    assert "whisper-1" in [model.id for model in ours.models.list()]
    text = ours.audio.transcriptions.create(file=("a.wav", wav(pcm)), model="whisper-1").text
    assert text == events[-1].text
    wrong = OpenAI(base_url=keyed.base_url + "/v1", api_key="key-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused_openai:
        wrong.audio.transcriptions.create(file=("a.wav", wav(pcm)), model="whisper-1")
    assert refused_openai.value.code == "unauthorized"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_cors_allows_the_listed_origin_only(http: httpx.Client) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = http.options("/v1/sessions", headers={"Origin": ALLOWED, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    assert {"authorization", "content-type", "last-event-id"} <= {
        h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
    }
    other = http.options("/v1/sessions", headers={"Origin": "http://other.example", **preflight})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    # A refusal is readable by the listed origin's page, so it can say what is wrong.
    answer = http.get(f"/v1/sessions/{UNKNOWN}", headers={"Origin": ALLOWED})
    assert answer.status_code == 401 and answer.headers["access-control-allow-origin"] == ALLOWED
    assert "retry-after" in answer.headers["access-control-expose-headers"].lower()


def test_no_key_reaches_the_log(keyed: ServiceProcess, http: httpx.Client) -> None:
    """uvicorn logs each request's path with its query: `?api_key=` is redacted there (HTTP and WebSocket)."""
    sid = create(http, K1)
    assert http.get(f"/v1/sessions/{sid}/events?api_key=key-wrong-in-the-url").status_code == 401
    http.delete(f"/v1/sessions/{sid}", headers=bearer(K1))
    assert http.get(f"/v1/sessions/{UNKNOWN}/events?api_key={K2}").status_code == 404

    async def connect() -> None:
        async with websockets.connect(f"{ws_url(keyed)}?api_key={K3}") as ws:
            await ws.close()

    asyncio.run(connect())
    log = keyed.log(tail=10**7)
    assert "/events?api_key=" in log and '"WebSocket /?api_key=' in log  # the lines are there, the keys are not
    assert not [key for key in (*KEYS, "key-wrong-in-the-url") if key in log]


# --- in-process: other settings, and each door's owner ----------------------------------------------------------


class _StandIn:
    """Enough of an engine: no workers, and a create_session that records its owner, then says the service is full."""

    started = True

    def __init__(self) -> None:
        self.owners: list[str | None] = []
        self.sessions: dict[str, Any] = {}

    async def stop(self) -> None:
        return None

    def workers(self) -> list[Any]:
        return []

    def get(self, session_id: str, owner: str | None = None) -> Any:
        raise SessionNotFound(f"no session {session_id}")

    async def find(self, session_id: str, owner: str | None = None) -> Any:
        return self.get(session_id, owner)

    def default_mode(self) -> Any:
        from engine.messages import Mode

        return Mode.ONLINE

    def create_session(self, *args: Any, owner: str | None = None, **kwargs: Any) -> None:
        self.owners.append(owner)
        raise ServiceFull("full", retry_after_s=5)

    async def open_session(self, *args: Any, owner: str | None = None, **kwargs: Any) -> None:
        self.create_session(*args, owner=owner, **kwargs)


def _app(engine: _StandIn | None = None, **settings: Any) -> Any:
    return create_app(Settings(_env_file=None, **settings), engine=engine or _StandIn())  # type: ignore[arg-type]


def test_without_keys_everything_is_open() -> None:
    engine = _StandIn()
    with TestClient(_app(engine)) as client:
        assert client.get("/v1/workers").json() == []
        assert client.get("/metrics").status_code == 200
        assert client.post("/v1/sessions").status_code == 503  # reached the engine
        assert client.get(f"/v1/sessions/{UNKNOWN}").json()["error"]["code"] == "session_not_found"
    assert engine.owners == [None]


def test_metrics_public_opens_metrics_only() -> None:
    with TestClient(_app(api_keys="k1", metrics_public=True)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/workers").status_code == 401
    with TestClient(_app(admin_keys="adm")) as client:  # admin keys alone turn keys on
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=bearer("adm")).status_code == 200


def test_cors_is_closed_by_default() -> None:
    client = TestClient(_app())  # no lifespan needed: the preflight never reaches the engine
    answer = client.options(
        "/v1/sessions", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in answer.headers


def test_every_door_stores_the_callers_identity() -> None:
    """REST, OpenAI's transcription and realtime, and FunASR's WebSocket create their sessions with owner=
    identity(key): a digest, never the key."""
    engine = _StandIn()
    with TestClient(_app(engine, api_keys="k1,k2")) as client:
        assert client.post("/v1/sessions", headers=bearer("k1")).status_code == 503
        answer = client.post("/v1/audio/transcriptions", headers=bearer("k2"), files={"file": ("a.wav", wav(synth_speechlike(0.5, seed=3)))})
        assert answer.status_code == 503
        with client.websocket_connect("/v1/realtime", headers=bearer("k1")) as ws:
            assert ws.receive_json()["type"] == "session.created"
            ws.send_json({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(4800)).decode()})
            assert ws.receive_json()["error"]["code"] == "service_full"
        with client.websocket_connect("/?api_key=k2") as ws:
            ws.send_text(json.dumps({"mode": "online", "is_speaking": True}))
            assert ws.receive_json()["code"] == "service_full"
    assert engine.owners == [auth.identity(k) for k in ("k1", "k2", "k1", "k2")]
    assert all(owner and owner.startswith("key_") and "k1" not in owner[4:] for owner in engine.owners)


# --- keys: parsing and the check ---------------------------------------------------------------------------------


def test_keys_parse_from_a_list_or_a_file(tmp_path: Path) -> None:
    assert auth.parse_keys(" a, b,,c ", "X") == ["a", "b", "c"]
    assert auth.parse_keys("", "X") == []
    path = tmp_path / "keys"
    path.write_text("# comment, not a key\nk1\nk2 , k3\n\n")
    assert auth.parse_keys(f"@{path}", "X") == ["k1", "k2", "k3"]
    path.write_text("# only a comment\n")
    with pytest.raises(auth.AccessConfigError, match="holds no key"):  # a typo must not open the service
        auth.parse_keys(f"@{path}", "X")
    with pytest.raises(auth.AccessConfigError, match="cannot read the key file"):
        auth.parse_keys(f"@{tmp_path / 'missing'}", "PARASTREAM_API_KEYS")
    with pytest.raises(auth.AccessConfigError) as bad:
        auth.parse_keys("good,sécret-key", "X")
    assert "sécret" not in str(bad.value) and "key 2" in str(bad.value)
    with pytest.raises(auth.AccessConfigError):
        create_app(Settings(_env_file=None, admin_keys=f"@{tmp_path / 'missing'}"))


def test_the_check_compares_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    access = auth.Access(["k1", "k2", "shared"], ["adm", "shared"])
    calls = 0
    compare = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        nonlocal calls
        calls += 1
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for key, admin in (("k1", False), ("adm", True), ("shared", True)):
        calls = 0
        caller = access.check(key)
        assert caller == auth.Caller(auth.identity(key), admin) and calls == 4  # no early exit
    calls = 0
    assert access.check("k") is None and access.check("k1x") is None and calls == 8
    assert access.check(None) is None and access.check("") is None
    assert auth.Access([], []).check(None) == auth.OPEN
    assert auth.identity("k1") != auth.identity("k2") and len(auth.identity("k1")) == 20


def test_the_log_filter_redacts_query_keys() -> None:
    record = logging.LogRecord(
        "uvicorn.access", 20, "", 0, '%s - "%s %s"', ("1.2.3.4", "GET", "/v1/x?a=1&api_key=s3cr3t&b=2"), None
    )
    auth.RedactKeys().filter(record)
    assert record.getMessage() == '1.2.3.4 - "GET /v1/x?a=1&api_key=REDACTED&b=2"'
    record = logging.LogRecord("uvicorn.error", 20, "", 0, '%s - "WebSocket %s"', ("h", "/?API%5Fkey=s3cr3t"), None)
    auth.RedactKeys().filter(record)
    assert "s3cr3t" not in record.getMessage()


def test_serve_refuses_an_unreadable_key_file(model_dir: Path, tmp_path: Path) -> None:
    """Before loading the model, with the setting and the file named (and no key)."""
    env = {
        **os.environ,
        "PARASTREAM_MODEL": str(model_dir),
        "PARASTREAM_PORT": str(free_port()),
        "PARASTREAM_API_KEYS": f"@{tmp_path / 'missing-keys'}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot start: PARASTREAM_API_KEYS=@{tmp_path / 'missing-keys'}: cannot read the key file" in result.stderr
