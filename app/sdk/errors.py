"""What the SDK raises: `ParastreamError` and its two kinds, so `except ParastreamError` catches everything."""

from __future__ import annotations

from typing import Any


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
