"""One JSON error shape for every failure: `{"error": {"code", "message", ...}}`, with Retry-After where useful.

Each engine error maps to one status here, so handlers never build responses by hand. Anything unexpected still
answers JSON (500) and is logged, but the tests hold that no request reaches that path.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from engine import metrics
from engine.errors import (
    BufferFull,
    EngineError,
    InvalidAudio,
    InvalidOptions,
    InvalidWorker,
    MigrationInFlight,
    NotReady,
    OffsetGap,
    RateLimited,
    ServiceFull,
    SessionElsewhere,
    SessionNotFound,
    SessionNotOpen,
    TooManySessions,
)

log = logging.getLogger(__name__)

STATUS: dict[type[EngineError], int] = {
    InvalidAudio: 400,
    SessionNotFound: 404,
    SessionNotOpen: 409,
    OffsetGap: 409,
    MigrationInFlight: 409,
    InvalidOptions: 422,
    InvalidWorker: 422,
    BufferFull: 429,
    TooManySessions: 429,
    RateLimited: 429,
    ServiceFull: 503,
    NotReady: 503,
    SessionElsewhere: 503,
}


class HTTPError(EngineError):
    """An error decided by the HTTP layer itself (content type, body size, headers)."""

    def __init__(
        self, status: int, code: str, message: str, retry_after_s: float | None = None, **details: object
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s, **details)
        self.status = status
        self.code = code


def error_response(status: int, code: str, message: str, retry_after_s: float | None = None, **details: Any) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
    return JSONResponse({"error": {"code": code, "message": message, **details}}, status_code=status, headers=headers)


async def _engine_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    if isinstance(exc, BufferFull):  # a REST append (the WebSocket protocols wait for room instead: engine/feed.py)
        metrics.reject(exc.code)
    status = exc.status if isinstance(exc, HTTPError) else STATUS.get(type(exc), 400)
    return error_response(status, exc.code, exc.message, exc.retry_after_s, **exc.details)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return error_response(422, "invalid_request", "the request does not match the API schema", errors=details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client left while its body was being read (a stalled upload given up): nobody will read an answer, and
    # it is no server error. 499 as nginx logs it.
    log.info("%s %s: the client left before its body was read", request.method, request.url.path)
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; the server log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
