"""Reading an audio body: the content type, and a size limit enforced while reading, not after."""

from __future__ import annotations

from fastapi import Request

from app.errors import HTTPError

PCM_CONTENT_TYPE = "application/octet-stream"


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
    return HTTPError(
        413, "payload_too_large", f"audio body over {limit} bytes (PARASTREAM_MAX_APPEND_BYTES); split it", limit=limit
    )
