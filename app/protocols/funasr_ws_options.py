"""What FunASR's WebSocket clients send before and between their audio: the JSON text messages, and the WAV header
FunASR's HTML5 page sends as if it were audio. The connection itself is app/protocols/funasr_ws.py.

A text message may carry any of the fields FunASR's clients send (docs/funasr-websocket.md has the table); keys
nobody sends are ignored, as FunASR's servers ignore them. Fields stick: a message that starts an utterance
overrides only what it names, so the second utterance of a connection keeps the first one's settings (FunASR's
servers keep them on the connection in the same way). Fields a client never sends take the service's session
defaults (those of `POST /v1/sessions`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from engine.hotwords import normalize_hotwords
from engine.messages import Mode, PipelineOptions, StreamOptions
from engine.service import validate_options

MAX_WAV_NAME_CHARS = 256  # echoed on every message: a long one would be copied into each
MAX_HOTWORDS_CHARS = 16_384  # the same bound as POST /v1/sessions
_INTEGER = re.compile(r"\s*-?[0-9]{1,18}\s*")  # a number as a string ("16000"), as FunASR's clients may send it
PCM_FORMATS = ("pcm", "wav")  # FunASR's clients say "pcm", "PCM" (HTML5, a .wav), or nothing (funasr-client, a .wav)
_DEFAULTS = StreamOptions()


class ProtocolError(Exception):
    """A message the protocol cannot take: the client gets an error message, then the socket closes with `close_code`
    (1008 policy violation: a field is wrong; 1003 unsupported data: a frame of a kind we cannot take)."""

    def __init__(self, message: str, close_code: int = 1008, code: str = "invalid_message") -> None:
        super().__init__(message)
        self.message = message
        self.close_code = close_code
        self.code = code


@dataclass(frozen=True)
class Config:
    """A connection's settings so far. `mode` None: the service's default (2pass with sentence models, else
    online)."""

    mode: Mode | None = None
    chunk_size: tuple[int, int, int] = _DEFAULTS.chunk_size
    encoder_chunk_look_back: int = _DEFAULTS.encoder_chunk_look_back
    decoder_chunk_look_back: int = _DEFAULTS.decoder_chunk_look_back
    wav_name: str = "microphone"  # FunASR's Python server's name for a stream that gives none
    audio_fs: int = 16_000
    hotwords: str = ""

    def stream_options(self) -> StreamOptions:
        return validate_options(self.chunk_size, self.encoder_chunk_look_back, self.decoder_chunk_look_back)

    def pipeline(self, default: Mode) -> PipelineOptions:
        return PipelineOptions(self.mode or default, self.hotwords)


@dataclass(frozen=True)
class TextMessage:
    config: Config  # the connection's settings with this message's fields applied
    starts: bool  # `is_speaking: true`: audio follows
    ends: bool  # the end of audio: `is_speaking: false`, `is_finished: true` (C++ clients) or `is_end: true`


def parse_text(text: str, base: Config) -> TextMessage:
    """A client's JSON text message over the connection's settings `base`; ProtocolError says what is wrong."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"a text message must be a JSON object: {exc.msg} at character {exc.pos}") from exc
    except (ValueError, RecursionError) as exc:  # a number of 4,300 digits or more; arrays nested past the stack
        raise ProtocolError("a text message must be a JSON object this server can read: a number too long or nesting too deep") from exc
    if not isinstance(message, dict):
        raise ProtocolError("a text message must be a JSON object, e.g. {\"mode\": \"online\", \"is_speaking\": true}")
    changes: dict[str, Any] = {}
    if message.get("mode") is not None:
        try:
            changes["mode"] = Mode(message["mode"])
        except ValueError:
            raise ProtocolError(f"mode must be online, 2pass or offline, not {message['mode']!r}") from None
    if message.get("chunk_size") is not None:
        changes["chunk_size"] = _chunk_size(message["chunk_size"])
    for key in ("encoder_chunk_look_back", "decoder_chunk_look_back"):
        if message.get(key) is not None:
            changes[key] = _integer(key, message[key])
    if message.get("wav_name") is not None:
        name = message["wav_name"]
        if not isinstance(name, str) or len(name) > MAX_WAV_NAME_CHARS:
            raise ProtocolError(f"wav_name must be a string of at most {MAX_WAV_NAME_CHARS} characters")
        changes["wav_name"] = name
    if message.get("audio_fs") is not None:
        changes["audio_fs"] = _integer("audio_fs", message["audio_fs"])
    if message.get("hotwords") is not None:
        changes["hotwords"] = _hotwords(message["hotwords"])
    fmt = message.get("wav_format")
    if fmt is not None and (not isinstance(fmt, str) or fmt.lower() not in PCM_FORMATS):
        raise ProtocolError(
            f"wav_format {fmt!r} is not served: send raw 16-bit mono PCM (wav_format \"pcm\"); decode other formats "
            "on the client",
            close_code=1003,
            code="unsupported_format",
        )
    # chunk_interval, itn, svs_lang, svs_itn and unknown keys: accepted and ignored (docs/funasr-websocket.md).
    config = dataclasses.replace(base, **changes)
    config.stream_options()  # InvalidOptions now, naming the field, rather than at the session's creation
    speaking = message.get("is_speaking")
    ends = speaking is False or message.get("is_finished") is True or message.get("is_end") is True
    return TextMessage(config, starts=speaking is True, ends=ends)


def _chunk_size(value: object) -> tuple[int, int, int]:
    """A list of three integers, or the same as a string, "5,10,5" (FunASR's Python client's command line form)."""
    items: list[object]
    if isinstance(value, str):
        items = [part.strip() for part in value.strip().strip("[]").split(",") if part.strip()]
    elif isinstance(value, list):
        items = list(value)
    else:
        items = []
    try:
        numbers = [_integer("chunk_size", item) for item in items]
    except ProtocolError:
        numbers = []
    if len(numbers) != 3:
        raise ProtocolError(f"chunk_size must be three integers, [5, 10, 5] or \"5,10,5\", not {value!r}")
    return numbers[0], numbers[1], numbers[2]


def _integer(key: str, value: object) -> int:
    if isinstance(value, bool):
        raise ProtocolError(f"{key} must be an integer, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value):  # ASCII digits: int() refuses "²", which isdigit() takes
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ProtocolError(f"{key} must be an integer, not {value!r}")


def _hotwords(value: object) -> str:
    """FunASR's clients send a string (a JSON object of word to weight, or words separated by spaces); an object
    is taken too."""
    if isinstance(value, dict):
        value = json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str) or len(value) > MAX_HOTWORDS_CHARS:
        raise ProtocolError(f"hotwords must be a string of at most {MAX_HOTWORDS_CHARS} characters")
    return normalize_hotwords(value)


def strip_wav_header(data: bytes) -> bytes:
    """The audio after a WAV header at the start of an utterance's first frame, or `data` as it is.

    FunASR's HTML5 page, in file mode, sends a .wav file's bytes whole, header included, declaring "PCM"; FunASR's
    servers take the header's bytes as samples. A header whose `data` chunk starts within the frame is skipped here
    (the page's frames are 960 bytes, its headers 44); one for another sample format is refused."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if chunk == b"fmt " and pos + 24 <= len(data):
            fmt_tag = int.from_bytes(data[pos + 8 : pos + 10], "little")
            channels = int.from_bytes(data[pos + 10 : pos + 12], "little")
            bits = int.from_bytes(data[pos + 22 : pos + 24], "little")
            if fmt_tag != 1 or channels != 1 or bits != 16:
                raise ProtocolError(
                    f"the WAV file is not 16-bit mono PCM (format {fmt_tag}, {channels} channels, {bits} bits)",
                    close_code=1003,
                    code="unsupported_format",
                )
        if chunk == b"data":
            return data[pos + 8 :]
        pos += 8 + size + (size & 1)
    return data
