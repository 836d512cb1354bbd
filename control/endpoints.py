"""``GET /admin/endpoints``: what the data plane's routers know of every upstream endpoint.

Each data-plane worker publishes its router's view to Redis every second
(:mod:`gateway.ops`); this merges the live workers' reports: state (up, warming,
half_open, ejected, down, draining) as most workers see it, in-flight, request, failure
and ejection counts summed, the last probe and the last scraped vLLM metrics.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from control.admin import ADMIN_ERRORS, require_admin
from gateway.contract import ops

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], responses=ADMIN_ERRORS)


@router.get("/endpoints")
async def list_endpoints(request: Request) -> dict[str, Any]:
    return ops.merge_reports(await ops.routing_reports(request.app.state.redis))
