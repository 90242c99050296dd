"""Liveness, readiness, worker status and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.auth import require_admin, require_metrics
from app.deps import get_engine
from app.schemas import Readiness, WorkerInfo
from engine.service import Engine

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The API process is alive and serving requests."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(engine: Annotated[Engine, Depends(get_engine)]) -> JSONResponse:
    """200 when every worker has loaded its model and the service takes sessions; 503 otherwise."""
    body = Readiness(ready=engine.ready, workers=_workers(engine), reason=engine.halt_reason)
    headers = None if engine.ready else {"Retry-After": "2"}
    return JSONResponse(body.model_dump(), status_code=200 if engine.ready else 503, headers=headers)


@router.get("/v1/workers", dependencies=[Depends(require_admin)])  # operators only, where keys are set
async def workers(engine: Annotated[Engine, Depends(get_engine)]) -> list[WorkerInfo]:
    """Each worker slot: pid, device, cores, sessions placed, and the cache bytes it last reported."""
    return _workers(engine)


def _workers(engine: Engine) -> list[WorkerInfo]:
    return [WorkerInfo.from_view(view) for view in engine.workers()]


@router.get(
    "/metrics",
    dependencies=[Depends(require_metrics)],  # an admin key unless PARASTREAM_METRICS_PUBLIC
    response_class=Response,  # the schema must not promise JSON: it is Prometheus' text format
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
