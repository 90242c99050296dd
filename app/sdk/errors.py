"""What the SDK raises: `ParastreamError` and its two kinds, so `except ParastreamError` catches everything; and
reading them (and Retry-After) from an answer."""

from __future__ import annotations

from typing import Any

import httpx


class ParastreamError(Exception):
    """Base class of the SDK's errors."""


class APIError(ParastreamError):
    """The service refused a request (a 4xx or 5xx answer that retrying would not fix), with its JSON error."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class ConnectionFailed(ParastreamError):
    """The service could not be reached, or the connection kept dropping, for `max_retries` tries in a row."""


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before the same request, for a 429 or 503 that says so; None otherwise."""
    if response.status_code not in (429, 503):
        return None
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def api_error(response: httpx.Response) -> APIError:
    try:
        error = response.json()["error"]
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        return APIError(response.status_code, str(error["code"]), str(error["message"]), details)
    except (ValueError, KeyError, TypeError):
        return APIError(response.status_code, "http_error", response.text[:200] or response.reason_phrase)
