"""Logging for every process of the service: PARASTREAM_LOG_FORMAT=text (readable lines) or json (one JSON object per
line: ts, level, logger, message, pid, and `session` and `protocol` on every line about a session).

A line is about a session when it says so with `extra=fields(session)` (the engine's and the workers' lines), or when
it is logged while a session is bound to the current context (`bind`): the engine binds a session when it creates it,
and the HTTP layer binds the session a request's path names, so uvicorn's access line of that request carries it too.

What never reaches a log: audio, tokens, transcripts, hotwords (the code never logs them) and keys: `api_key=...`
in a logged URL and `Bearer ...` are redacted from every line, whatever logged it. This module is stdlib only: the
model host and the workers (engine/worker/host.py) configure themselves with it too.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Protocol, TextIO, cast

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

_bound: ContextVar[tuple[str, str | None] | None] = ContextVar("parastream_session", default=None)
# `api_key=...` in a query string (or anywhere in a line), and an Authorization header's credentials.
_SECRETS = re.compile(r"((?:api[_-]?key|access_token|token)=)[^&\s\"']+|(Bearer\s+)[^\s\"']+", re.IGNORECASE)


class SessionLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def protocol(self) -> str: ...


def fields(session: SessionLike) -> dict[str, str | None]:
    """`extra=` for a line about `session`: its id and the protocol it came in by."""
    return about(session.id, session.protocol)


def about(session_id: str, protocol: str | None) -> dict[str, str | None]:
    return {"session": session_id, "protocol": protocol}


def bind(session_id: str, protocol: str | None) -> None:
    """Lines logged from now on in this context (a request's or a connection's task) are about this session."""
    _bound.set((session_id, protocol))


def redact(text: str) -> str:
    return _SECRETS.sub(lambda m: f"{m.group(1) or m.group(2)}REDACTED", text)


class ContextFilter(logging.Filter):
    """Adds the bound session to records that do not name one, and redacts keys from the message (a handler's
    filter, so it sees the records of every logger, uvicorn's included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "session", None) is None:
            bound = _bound.get()
            if bound is not None:
                record.session, protocol = bound
                if protocol is not None:
                    record.protocol = protocol
        message = record.getMessage()
        if redact(message) != message:
            # In place where possible: uvicorn's access formatter unpacks the arguments.
            if isinstance(record.msg, str):
                record.msg = redact(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
            if redact(message := record.getMessage()) != message:
                record.msg, record.args = redact(message), None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in ("session", "protocol"):
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


class _LineLogger(io.TextIOBase):
    """A stream whose lines become log records: what libraries print (funasr's notices, tqdm's bars) in json mode."""

    def __init__(self, logger: logging.Logger, level: int, real: TextIO) -> None:
        self._logger, self._level, self._real, self._pending = logger, level, real, ""
        self._busy = False  # logging's own complaints (Handler.handleError) go to the real stream, not round again

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._busy:
            return self._real.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        self._emit(self._pending)
        self._pending = ""

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        self._busy = True
        try:
            self._logger.log(self._level, line.rstrip())
        finally:
            self._busy = False

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._real.fileno()  # what writes to the descriptor itself (faulthandler) bypasses the records


def configure(log_format: str, text_format: str = TEXT_FORMAT, level: int = logging.INFO) -> None:
    """Configure this process's logging: one handler on the root logger, writing to stderr. json also turns Python
    warnings and whatever is printed to stdout or stderr into records, so that every line is a JSON object."""
    stream = sys.__stderr__ or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    if log_format == "json":
        logging.captureWarnings(True)
        sys.stdout = cast(TextIO, _LineLogger(logging.getLogger("stdout"), logging.INFO, sys.__stdout__ or stream))
        sys.stderr = cast(TextIO, _LineLogger(logging.getLogger("stderr"), logging.WARNING, stream))


def adopt_uvicorn_loggers(log_format: str) -> None:
    """After uvicorn configured its loggers: json sends them to the root handler; text keeps uvicorn's handlers but
    gives them the same filter (the session of a request, and no key in a logged URL)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if log_format == "json":
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
        else:
            for handler in logger.handlers:
                if not any(isinstance(f, ContextFilter) for f in handler.filters):
                    handler.addFilter(ContextFilter())


@contextlib.contextmanager
def bound(session_id: str, protocol: str | None) -> Iterator[None]:
    """Lines logged inside the block are about this session (code that does not know which session it serves)."""
    token = _bound.set((session_id, protocol))
    try:
        yield
    finally:
        _bound.reset(token)
