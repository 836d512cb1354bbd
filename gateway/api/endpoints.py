"""``GET /admin/endpoints``: what the router knows of every upstream endpoint.

State (up, warming, half_open, ejected, down, draining), in-flight and request counts,
failures and ejections, the last probe and the last scraped vLLM metrics.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from gateway.api.admin import StateDep, require_admin
from gateway.routing.observe import describe

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


@router.get("/endpoints")
async def list_endpoints(state: StateDep) -> dict[str, Any]:
    return describe(state.pipeline.router)
