"""Parastream's Python SDK: stream audio to the service and get typed transcript events back (docs/sdk.md).

    from app.sdk import Client, FinalEvent, PartialEvent

    with Client("http://127.0.0.1:8000") as client:
        for event in client.transcribe("speech.wav", mode="online"):
            if isinstance(event, PartialEvent):
                print(event.text, end="", flush=True)
            elif isinstance(event, FinalEvent):
                print("\\n" + event.text)

`AsyncClient` is the same for asyncio (`async for event in client.transcribe(...)`). Both create a session,
send a file, an array, bytes or an iterable of PCM frames (at real-time pace or as fast as the service takes it)
while the events stream back, and resume after a dropped connection with `offset` and `Last-Event-ID`, so every
event arrives exactly once.
"""

from app.sdk.async_client import DEFAULT_URL, AsyncClient
from app.sdk.audio import DEFAULT_SAMPLE_RATE, SAMPLE_RATES, AudioSource, load_audio
from app.sdk.errors import APIError, ConnectionFailed, ParastreamError
from app.sdk.events import (
    ErrorEvent,
    Event,
    FinalEvent,
    GapEvent,
    PartialEvent,
    SentenceEvent,
    event_to_dict,
    parse_event,
)
from app.sdk.session import Session
from app.sdk.sync_client import Client

__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "DEFAULT_URL",
    "SAMPLE_RATES",
    "APIError",
    "AsyncClient",
    "AudioSource",
    "Client",
    "ConnectionFailed",
    "ErrorEvent",
    "Event",
    "FinalEvent",
    "GapEvent",
    "ParastreamError",
    "PartialEvent",
    "SentenceEvent",
    "Session",
    "event_to_dict",
    "load_audio",
    "parse_event",
]
