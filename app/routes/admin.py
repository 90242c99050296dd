"""Operator actions on the node as a whole."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from app.auth import require_admin
from app.deps import get_engine
from app.errors import HTTPError
from app.schemas import ErrorResponse
from engine.service import Engine

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/drain", status_code=202, responses={503: {"model": ErrorResponse}})
async def drain(request: Request, engine: Annotated[Engine, Depends(get_engine)]) -> JSONResponse:
    """Drain this node as SIGTERM does, then exit: no new sessions; in a cluster, open sessions get
    PARASTREAM_CLUSTER_DRAIN_S to finish and are then handed off to other nodes (docs/cluster.md). 202 at once; 503
    where the service is not run by `parastream serve` (nothing would exit)."""
    start: Callable[[], bool] | None = getattr(request.app.state, "request_drain", None)
    if start is None:
        raise HTTPError(503, "not_supported", "this service is not run by `parastream serve`; stop it by its own means")
    started = start()
    node = engine.cluster.name if engine.cluster is not None else None
    return JSONResponse({"draining": True, "already": not started, "node": node}, status_code=202)
