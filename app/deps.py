"""Request-scoped access to the engine and settings that the lifespan put on the app."""

from __future__ import annotations

from fastapi import Request

from engine.service import Engine
from engine.settings import Settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
