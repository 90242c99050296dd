"""Liveness, readiness, worker status and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import get_engine
from engine.service import Engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The API process is alive and serving requests."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(engine: Annotated[Engine, Depends(get_engine)]) -> JSONResponse:
    """200 when every worker has loaded its model and the service takes sessions; 503 otherwise."""
    body = {
        "ready": engine.ready,
        "workers": [slot.describe() for slot in engine.supervisor.slots],
        "reason": engine.supervisor.halt_reason,
    }
    headers = None if engine.ready else {"Retry-After": "2"}
    return JSONResponse(body, status_code=200 if engine.ready else 503, headers=headers)


@router.get("/v1/workers")
async def workers(engine: Annotated[Engine, Depends(get_engine)]) -> list[dict[str, object]]:
    """Each worker slot: pid, device, cores, sessions placed, and the cache bytes it last reported."""
    return [slot.describe() for slot in engine.supervisor.slots]


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
