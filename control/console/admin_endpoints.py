"""The admin pages of the platform itself: endpoints and clusters (health, load and ejections
as routing sees them) and the control plane's API reference.

The data comes from the same merged reports as ``GET /admin/endpoints`` (every data-plane
worker publishes its router's view to Redis each second; control/endpoints.py); the page
groups the endpoints by cluster and sums each cluster's load.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from control.api_reference import build_reference
from control.console.admin_common import AdminSession
from control.console.web import render
from gateway.contract import ops

router = APIRouter()


def clusters_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cluster: its region, endpoints up of all, in-flight, requests, failures, ejections."""
    clusters: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (str(r.get("cluster")), str(r.get("url")))):
        name = str(row.get("cluster") or "")
        cluster = clusters.setdefault(
            name,
            {
                "name": name,
                "region": row.get("region"),
                "endpoints": [],
                "up": 0,
                "in_flight": 0,
                "requests": 0,
                "failures": 0,
                "ejections": 0,
            },
        )
        cluster["endpoints"].append(row)
        cluster["up"] += row.get("state") == "up"
        for field in ("in_flight", "requests", "failures", "ejections"):
            cluster[field] += int(row.get(field) or 0)
    return list(clusters.values())


@router.get("/endpoints")
async def endpoints_page(request: Request, session: AdminSession) -> Response:
    view = ops.merge_reports(await ops.routing_reports(request.app.state.redis))
    return render(
        request, "admin/endpoints.html", session=session, view=view, clusters=clusters_of(view["data"])
    )


@router.get("/api")
async def api_page(request: Request, session: AdminSession) -> Response:
    reference = build_reference(request.app.openapi())
    return render(request, "admin/api.html", session=session, reference=reference)
