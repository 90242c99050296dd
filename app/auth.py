"""Who may call the service, whose sessions they may see, and which other origins' pages may call it
(docs/operations.md, "Keys, ownership and CORS").

- **Keys.** PARASTREAM_API_KEYS and PARASTREAM_ADMIN_KEYS, each comma-separated or `@path` to a file of them (one
  per line or comma-separated, `#` comments), read once when the app is built: a key file that cannot be read, or
  holds no key, stops the service before it serves. An admin key is an API key too. With neither set, every caller
  is `OPEN` and nothing is checked (the service as it was before keys existed).
- **The check** hashes the candidate and compares the digest with every configured key's digest through
  `hmac.compare_digest`, without stopping at a match: the time taken does not depend on which key matched, on how
  much of a key was right, or on its length. A missing key and a wrong key get the same 401 body.
- **Identity.** A session's owner is `key_` and 16 hex digits of a SHA-256 of the key under a label of its own
  (not the digest compared above): what Session.owner holds, and what logs and metrics may show. The key itself is
  stored nowhere but in the app's key list, and never logged: uvicorn's access and WebSocket lines print the query
  string, so `RedactKeys` takes `api_key=` out of them.
- **Where a key is read.** HTTP: `Authorization: Bearer <key>` only, except on `GET /v1/sessions/{id}/events`,
  which also takes `?api_key=` because a browser's EventSource cannot set headers. Nowhere else, since a key in a
  URL ends up in proxies' logs and browsers' history. WebSockets: the header, `?api_key=` (FunASR's clients cannot
  send headers), or the `openai-insecure-api-key.<key>` subprotocol OpenAI's browser SDK offers.
- **Answers.** 401 `unauthorized` with `WWW-Authenticate: Bearer` (OpenAI's error shape on its routes, so its SDK
  raises AuthenticationError); 403 `forbidden` for a valid key on an operator route without being an admin key. A
  WebSocket is accepted, then closed with 1008 "unauthorized" (OpenAI realtime first gets an `error` event, as
  OpenAI's own server sends for a wrong key): a browser shows a close code and reason, never the status of a refused
  handshake.
- **Ownership.** Every route under `/v1/sessions/{session_id}` goes through `session_access` (or `events_access`),
  which looks the session up with the caller's identity (`Engine.get(..., owner=)`): another key's session is 404
  with the body of an unknown id. Admin keys are bound by it too: they add the operator routes, not other keys'
  sessions (so `migrate` needs the session's own key, and an admin one).
- **CORS.** Closed unless PARASTREAM_CORS_ORIGINS lists origins (or `*`); the service's own page is same-origin.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocketDisconnect

from app.errors import HTTPError, error_response
from engine import metrics
from engine.service import Engine
from engine.settings import Settings

QUERY_PARAM = "api_key"
# OpenAI's browser SDK cannot set headers on a WebSocket either: it offers the key as a subprotocol.
OPENAI_SUBPROTOCOL = "openai-insecure-api-key."
UNAUTHORIZED = "this service needs an API key: send it as `Authorization: Bearer <key>`"
FORBIDDEN = "an operator route: it needs an admin key (PARASTREAM_ADMIN_KEYS)"
WEBSOCKET_CLOSE = 1008  # policy violation
WEBSOCKET_REASON = "unauthorized"
_VISIBLE_ASCII = re.compile(r"[!-~]+")  # what an HTTP header and a URL carry unchanged: no space, no comma


class AccessConfigError(ValueError):
    """PARASTREAM_API_KEYS / PARASTREAM_ADMIN_KEYS cannot be used; the message names the setting, never a key."""


@dataclass(frozen=True)
class Caller:
    owner: str | None  # the identity sessions are stored under; None where no keys are set
    admin: bool


OPEN = Caller(None, admin=True)  # every caller, where no keys are set


def identity(key: str) -> str:
    """The owner id a key's sessions are stored under: short, stable, and not the key (nor the digest checked)."""
    return "key_" + hashlib.sha256(b"parastream session owner\x00" + key.encode()).hexdigest()[:16]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(value: str, name: str) -> list[str]:
    """The keys of one setting: `k1,k2`, or `@path` to a file of them (one per line or comma-separated, `#` starts a
    comment line). Empty: none. A file that cannot be read or holds no key is an error (a typo must not open the
    service), as is a key that is not visible ASCII (spaces and commas separate keys)."""
    value = value.strip()
    if not value:
        return []
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise AccessConfigError(f"{name}=@{path}: cannot read the key file: {why}") from None
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        keys = [key.strip() for line in lines for key in line.split(",") if key.strip()]
        if not keys:
            raise AccessConfigError(f"{name}=@{path}: the key file holds no key")
    else:
        keys = [key.strip() for key in value.split(",") if key.strip()]
    for number, key in enumerate(keys, 1):
        if not _VISIBLE_ASCII.fullmatch(key):
            raise AccessConfigError(f"{name}: key {number} has a character that is not visible ASCII")
    return keys


@dataclass(frozen=True)
class _Key:
    digest: bytes
    caller: Caller


class Access:
    """The configured keys, and the one check every door makes."""

    def __init__(self, api_keys: list[str], admin_keys: list[str], metrics_public: bool = False) -> None:
        admins = set(admin_keys)
        unique = dict.fromkeys([*api_keys, *admin_keys])
        self._keys = [_Key(_digest(key), Caller(identity(key), key in admins)) for key in unique]
        self.enabled = bool(self._keys)
        self.metrics_public = metrics_public or not self.enabled

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        return cls(
            parse_keys(settings.api_keys, "PARASTREAM_API_KEYS"),
            parse_keys(settings.admin_keys, "PARASTREAM_ADMIN_KEYS"),
            settings.metrics_public,
        )

    def check(self, key: str | None) -> Caller | None:
        """Who `key` is, or None for a missing or wrong one; OPEN where no keys are set."""
        if not self.enabled:
            return OPEN
        if not key:
            return None
        candidate = _digest(key)
        found: Caller | None = None
        for entry in self._keys:  # every key, always: no early exit
            if hmac.compare_digest(candidate, entry.digest):
                found = entry.caller
        return found


# --- where the key comes from ---------------------------------------------------------------------------------


def bearer(connection: HTTPConnection) -> str | None:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def websocket_key(connection: HTTPConnection) -> str | None:
    """A WebSocket's key: the Bearer header, else `?api_key=`, else OpenAI's browser subprotocol."""
    key = bearer(connection) or connection.query_params.get(QUERY_PARAM)
    if key:
        return key
    for offered in connection.scope.get("subprotocols") or []:
        if offered.startswith(OPENAI_SUBPROTOCOL):
            return str(offered[len(OPENAI_SUBPROTOCOL) :])
    return None


def access_of(connection: HTTPConnection) -> Access:
    access: Access = connection.app.state.access
    return access


def websocket_caller(connection: HTTPConnection) -> Caller | None:
    """The caller of a WebSocket, or None: the endpoint then accepts and closes with WEBSOCKET_CLOSE (module
    docstring), before creating anything."""
    return access_of(connection).check(websocket_key(connection))


async def refuse(websocket: WebSocket, message: str | None = None) -> None:
    """Close an accepted WebSocket whose caller has no valid key: `message` first (a text frame), if any, then
    WEBSOCKET_CLOSE with the reason "unauthorized". A client already gone is no error."""
    metrics.reject("unauthorized")
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if message is not None:
            await websocket.send_text(message)
        await websocket.close(WEBSOCKET_CLOSE, WEBSOCKET_REASON)


# --- FastAPI dependencies -------------------------------------------------------------------------------------


class Unauthorized(HTTPError):
    headers = {"WWW-Authenticate": "Bearer"}

    def __init__(self) -> None:
        metrics.reject("unauthorized")  # counted where it is raised: OpenAI's routes answer it with their own handler
        super().__init__(401, "unauthorized", UNAUTHORIZED)


def _forbidden() -> HTTPError:
    return HTTPError(403, "forbidden", FORBIDDEN)


async def require_key(request: Request) -> Caller:
    """The caller, from `Authorization: Bearer`; 401 without a valid key (where keys are set)."""
    caller = access_of(request).check(bearer(request))
    if caller is None:
        raise Unauthorized()
    return caller


async def require_key_or_query(request: Request) -> Caller:
    """As require_key, also taking `?api_key=`: only for the event stream, which EventSource opens without headers."""
    caller = access_of(request).check(bearer(request) or request.query_params.get(QUERY_PARAM))
    if caller is None:
        raise Unauthorized()
    return caller


CallerDep = Annotated[Caller, Depends(require_key)]


async def require_admin(caller: CallerDep) -> Caller:
    """An admin key (operator routes); 401 without a valid key, 403 for a key that is not an admin key."""
    if not caller.admin:
        raise _forbidden()
    return caller


async def require_metrics(request: Request) -> None:
    """/metrics: open where no keys are set or PARASTREAM_METRICS_PUBLIC is true, else an admin key."""
    if not access_of(request).metrics_public:
        await require_admin(await require_key(request))


async def _owned(request: Request, caller: Caller) -> None:
    """404, as for an unknown id, when the route's session is not the caller's. (In a cluster, a session of a lost
    node is taken over here, before the route runs: `Engine.find`.)"""
    session_id = request.path_params.get("session_id")
    if session_id is not None:
        engine: Engine = request.app.state.engine
        await engine.find(session_id, owner=caller.owner)


async def session_access(request: Request, caller: CallerDep) -> Caller:
    """The caller of a /v1/sessions route, whose session (if the path names one) must be the caller's."""
    await _owned(request, caller)
    return caller


async def events_access(request: Request, caller: Annotated[Caller, Depends(require_key_or_query)]) -> Caller:
    """session_access for the event stream (`?api_key=` taken too)."""
    await _owned(request, caller)
    return caller


SessionCallerDep = Annotated[Caller, Depends(session_access)]


# --- the app --------------------------------------------------------------------------------------------------


async def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Unauthorized)
    response = error_response(exc.status, exc.code, exc.message)
    response.headers.update(exc.headers)
    return response


_KEY_IN_URL = re.compile(r"(api(?:_|%5f)key=)[^&\s\"']+", re.IGNORECASE)


class RedactKeys(logging.Filter):
    """`?api_key=` out of uvicorn's access and WebSocket lines, which log each path with its query (on uvicorn's own
    loggers, so it holds whatever handlers the logging setup gives them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):  # uvicorn's access formatter unpacks the arguments: redact in place
            record.args = tuple(_KEY_IN_URL.sub(r"\1REDACTED", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _KEY_IN_URL.sub(r"\1REDACTED", record.msg)
        return True


def cors_origins(settings: Settings) -> list[str]:
    return [origin.strip().rstrip("/") for origin in settings.cors_origins.split(",") if origin.strip()]


def install(app: FastAPI, settings: Settings) -> None:
    """Read the keys (AccessConfigError if they cannot be used), answer 401s with WWW-Authenticate, keep `?api_key=`
    out of uvicorn's lines, and allow the configured origins."""
    app.state.access = Access.from_settings(settings)
    app.add_exception_handler(Unauthorized, _unauthorized)
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())
    origins = cors_origins(settings)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
