"""The FastAPI application. It imports neither torch nor funasr: inference lives in engine processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import auth, errors
from app.body import JsonBodyLimit, LingeringClose
from app.log_context import SessionLogContext
from app.protocols import funasr_ws, openai_audio, openai_realtime
from app.routes import events, health, page, sessions
from engine.service import Engine
from engine.settings import Settings


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. Pass an already started `engine` to start the model before serving (as `parastream serve`
    does, so that a model that cannot load is reported before the port opens); otherwise the lifespan starts one."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng = engine or Engine(settings)
        if not eng.started:
            await eng.start()
        app.state.engine = eng
        try:
            yield
        finally:
            await eng.stop()

    app = FastAPI(
        title="Parastream",
        version="0.1.0",
        description="Streaming speech-to-text for FunASR's streaming Paraformer. See docs/api.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    errors.install(app)
    # A refused body is read (a bounded amount) before the answer, so the client can read it (app/body.py).
    app.add_middleware(JsonBodyLimit)  # inside LingeringClose: a refused body is still discarded readably
    app.add_middleware(LingeringClose, max_bytes=settings.max_discard_bytes)
    auth.install(app, settings)  # keys, 401s, CORS (docs/operations.md)
    app.add_middleware(SessionLogContext)  # the session a request's path names, on its log lines (engine/logs.py)
    app.include_router(sessions.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(page.router)
    app.include_router(funasr_ws.router)
    app.include_router(openai_audio.router)
    app.include_router(openai_realtime.router)
    return app
