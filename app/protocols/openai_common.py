"""What OpenAI's two protocols here share (app/protocols/openai_audio.py, app/protocols/openai_realtime.py): the model
ids and the pipeline each one picks, OpenAI's error body, and hotwords from OpenAI's `prompt` and `keywords`.

Decisions (docs/openai.md has the reasoning for clients):
- **Model ids.** `parastream` is the best pipeline the service has; `parastream-online` the streaming model alone;
  `parastream-offline` the VAD + offline model + punctuation, where configured. Any other id (`whisper-1`,
  `gpt-4o-transcribe`, a Hugging Face name a client was set up with) is served as `parastream`, so existing clients
  work unchanged; only an unknown `parastream-*` id is refused (404 `model_not_found`), since that is a typo in ours.
- **prompt -> hotwords, best effort.** SeACo-Paraformer biases toward hotwords, and a vocabulary list is what OpenAI's
  prompting guide puts in a prompt for rare words and names. The prompt is split on whitespace and list punctuation;
  pieces too long to be a hotword, and any past the limit, are dropped, never refused (a prompt is a hint). Only the
  offline model hears hotwords: with `parastream-online` they change nothing.
- **keywords -> hotwords, strictly** (OpenAI's own word list for gpt-transcribe; also the `hotwords` extension field
  in FunASR's forms): a bad list is a 400, as on Parastream's REST API.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from fastapi.responses import JSONResponse

from app.errors import HTTPError
from engine.hotwords import MAX_HOTWORD_CHARS, MAX_HOTWORDS, normalize_hotwords
from engine.messages import Mode
from engine.settings import Settings

DEFAULT_MODEL = "parastream"
ONLINE_MODEL = "parastream-online"
OFFLINE_MODEL = "parastream-offline"
# OpenAI's transcription model names, listed by /v1/models as aliases of `parastream` so that clients which pick
# from (or check against) the list find the name they were configured with.
OPENAI_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")


def model_ids(settings: Settings) -> list[str]:
    """The ids /v1/models lists: ours, then OpenAI's names that mean `parastream`."""
    ours = [DEFAULT_MODEL, ONLINE_MODEL] + ([OFFLINE_MODEL] if settings.sentences_enabled else [])
    return ours + list(OPENAI_ALIASES)


def resolve_model(model: str | None, settings: Settings) -> str:
    """Which of our pipelines `model` names: DEFAULT_MODEL, ONLINE_MODEL or OFFLINE_MODEL (see the module docstring);
    HTTPError 404 for an unknown `parastream-*` id or `parastream-offline` on a service without sentence models."""
    if not model or model == DEFAULT_MODEL:
        return DEFAULT_MODEL
    if model == ONLINE_MODEL:
        return ONLINE_MODEL
    if model == OFFLINE_MODEL and settings.sentences_enabled:
        return OFFLINE_MODEL
    if model.startswith(DEFAULT_MODEL + "-"):
        why = (
            "this service has no sentence models (PARASTREAM_VAD_MODEL and PARASTREAM_OFFLINE_MODEL)"
            if model == OFFLINE_MODEL
            else "no such model"
        )
        raise HTTPError(
            404,
            "model_not_found",
            f"the model `{model}` is not served: {why}; GET /v1/models lists the served ids",
            param="model",
        )
    return DEFAULT_MODEL  # OpenAI's names and anything else a client was configured with


def transcription_mode(model: str, settings: Settings) -> Mode:
    """The session mode a file transcription uses: the offline pipeline (VAD, offline model, punctuation) where the
    service has it, since a file needs no partials; otherwise the streaming model."""
    if model == ONLINE_MODEL or not settings.sentences_enabled:
        return Mode.ONLINE
    return Mode.OFFLINE


def realtime_mode(model: str, settings: Settings) -> Mode:
    """The session mode of a realtime transcription: 2pass where the service has sentence models (partials as
    deltas, a punctuated sentence per completed item), offline for `parastream-offline` (no deltas), else online."""
    if model == ONLINE_MODEL or not settings.sentences_enabled:
        return Mode.ONLINE
    return Mode.OFFLINE if model == OFFLINE_MODEL else Mode.TWO_PASS


# --- hotwords -----------------------------------------------------------------------------------------------

_PROMPT_SEPARATORS = re.compile(r"[\s,;，、；。.!?！？:：\"'“”‘’()（）]+")


def hotwords_for(prompt: str | None = None, keywords: Iterable[str] = (), hotwords: str | None = None) -> str:
    """The session's hotwords: `keywords` and `hotwords` strictly (InvalidOptions, a 400, says what is wrong), then
    the words of `prompt` that fit (best effort, see the module docstring)."""
    # Keywords may be phrases: each of their words is a hotword. `hotwords` may be FunASR's JSON form.
    words = list(dict.fromkeys(normalize_hotwords(hotwords).split() + normalize_hotwords(" ".join(keywords)).split()))
    if len(words) > MAX_HOTWORDS:
        normalize_hotwords(" ".join(words))  # raises, saying what the limit is
    for piece in _PROMPT_SEPARATORS.split(prompt or ""):
        if len(words) >= MAX_HOTWORDS:
            break
        if piece and len(piece) <= MAX_HOTWORD_CHARS and "\x00" not in piece and piece not in words:
            words.append(piece)
    return " ".join(words)


# --- errors -------------------------------------------------------------------------------------------------


def error_type(status: int) -> str:
    """OpenAI's error `type` for a status: what its SDK and clients branch on."""
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, code: str, message: str, param: str | None = None, **details: Any) -> dict[str, Any]:
    """OpenAI's error object (`message`, `type`, `param`, `code`), plus Parastream's details (e.g. `limit`)."""
    return {"message": message, "type": error_type(status), "param": param, "code": code, **details}


def error_response(
    status: int, code: str, message: str, retry_after_s: float | None = None, **details: Any
) -> JSONResponse:
    """`{"error": {...}}` as OpenAI answers, with Retry-After where the client should wait (429, 503)."""
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
    return JSONResponse({"error": error_body(status, code, message, **details)}, status_code=status, headers=headers)
