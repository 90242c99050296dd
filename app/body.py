"""Reading an audio body: the content type, and a size limit enforced while reading, not after; and `LingeringClose`,
which lets a client that is still sending a refused body read the answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import HTTPError, error_response
from engine import metrics

log = logging.getLogger(__name__)

# How long a refused body is read and thrown away, at most (nginx's lingering close: its lingering_time).
DISCARD_S = 2.0

PCM_CONTENT_TYPE = "application/octet-stream"
# The largest JSON body a route takes (POST /v1/sessions, migrate; FastAPI's per-route max_body_size, refused from
# the Content-Length or while reading). A constant, not a setting: the largest valid body (16 KiB of hotwords and
# the options) is a quarter of it, so no operator has a reason to tune it; what it stops is a client holding a
# request open on a huge Content-Length, or one sending megabytes of JSON to be parsed.
MAX_JSON_BYTES = 65_536


async def read_pcm_body(request: Request, limit: int) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != PCM_CONTENT_TYPE:
        raise HTTPError(
            415,
            "unsupported_media_type",
            f"audio must be sent as {PCM_CONTENT_TYPE} (raw little-endian 16-bit mono PCM), got {content_type or 'none'}",
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, "invalid_content_length", "Content-Length must be a non-negative integer")
        if int(declared) > limit:
            raise _too_large(limit)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:  # chunked uploads carry no Content-Length; stop reading as soon as it is too much
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> HTTPError:
    metrics.reject("payload_too_large")
    return HTTPError(
        413, "payload_too_large", f"audio body over {limit} bytes (PARASTREAM_MAX_APPEND_BYTES); split it", limit=limit
    )


class LingeringClose:
    """nginx's lingering close, for an answer given before the request's body was read: a 413 refused by its
    Content-Length, or any 4xx decided before reading (an unknown session, a wrong content type, a rate limit).

    Without it, the answer goes out and uvicorn closes the connection (at once where the client asked for
    `Connection: close`, as Python's urllib does) with the body's rest unread; the kernel answers what still arrives
    with a reset, and a client that sends its whole body before reading (urllib, requests, httpx) gets "connection
    reset" instead of the answer. So before the answer is sent, the rest of the body is read and thrown away: up to
    PARASTREAM_MAX_DISCARD_BYTES and for at most DISCARD_S. Not at all when the declared Content-Length leaves more
    than that to read (the client will be reset anyway: the answer goes out at once), nor when the client waits for
    `100 Continue` before sending the body (curl does for large bodies): it gets the answer and never sends it."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_s: float = DISCARD_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_s = max_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not chunked and (not declared.isdigit() or int(declared) == 0):
            await self.app(scope, receive, send)  # no body
            return
        asked = False  # the app called receive (uvicorn then sends `100 Continue` to a client that waits for it)
        received = 0
        done = False  # the body was read to its end, or the client left

        async def tracking_receive() -> Message:
            nonlocal asked, received, done
            asked = True
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = done or not message.get("more_body", False)
            else:
                done = True
            return message

        async def lingering_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not done:
                await self._discard(headers, asked, received, tracking_receive)
            await send(message)

        await self.app(scope, tracking_receive, lingering_send)

    async def _discard(self, headers: Headers, asked: bool, received: int, receive: Receive) -> None:
        if not asked and headers.get("expect", "").lower() == "100-continue":
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) - received > self.max_bytes:
            return
        discarded = 0

        async def drain() -> None:
            nonlocal discarded
            while discarded <= self.max_bytes:
                message = await receive()
                if message["type"] != "http.request":
                    return
                discarded += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drain(), self.max_s)
        log.debug("discarded %d bytes of a refused request body", discarded)


# The largest JSON request body (POST /v1/sessions, migrate). A constant, not a setting: the largest valid body
# (16 KiB of hotwords and the options) is a quarter of it, so no operator has a reason to tune it. What it stops is a
# client holding a request open on a huge Content-Length, or sending megabytes of JSON to be parsed.
MAX_JSON_BYTES = 65_536


class _JsonTooLarge(Exception):
    pass


class JsonBodyLimit:
    """Refuses a JSON body over MAX_JSON_BYTES with the API's 413: from its Content-Length before reading, or while
    reading a chunked one. Audio and uploads are other content types, with their own limits (read_pcm_body,
    PARASTREAM_MAX_UPLOAD_BYTES)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        if headers is None or not headers.get("content-type", "").lower().startswith("application/json"):
            await self.app(scope, receive, send)
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_JSON_BYTES:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_JSON_BYTES:
                raise _JsonTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _JsonTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
        metrics.reject("payload_too_large")
        message = f"JSON body over {MAX_JSON_BYTES} bytes: larger than any valid request"
        await error_response(413, "payload_too_large", message, limit=MAX_JSON_BYTES)(scope, receive, send)
