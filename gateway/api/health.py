"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.state import GatewayState

router = APIRouter()
READY_TIMEOUT_S = 1.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, response: Response) -> dict[str, object]:
    """Ready when Redis answers and the catalog has at least one model with endpoints."""
    state: GatewayState = request.app.state.gateway
    checks: dict[str, object] = {}
    try:  # a silent Redis must not hold the probe longer than probes wait
        checks["redis"] = bool(await asyncio.wait_for(state.redis.ping(), READY_TIMEOUT_S))
    except TimeoutError:
        checks["redis"] = f"no answer within {READY_TIMEOUT_S:g}s"
    except Exception as exc:  # any failure means not ready; say which
        checks["redis"] = f"unreachable: {exc.__class__.__name__}"
    checks["models"] = len(state.pipeline.catalog.models)
    ready = checks["redis"] is True and checks["models"] != 0
    response.status_code = 200 if ready else 503
    return {"status": "ready" if ready else "not ready", "checks": checks}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
