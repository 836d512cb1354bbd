"""Liveness and readiness of a control-plane process: Redis and the ledger answer."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from typing_extensions import TypedDict  # pydantic reads these as response models (Python < 3.12)

from billing.db import migrate
from billing.responses import errors
from billing.service import Billing

router = APIRouter(responses=errors(400, 413))  # the door's: a NUL in the URL, a body too big
CHECK_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving HTTP."""
    return {"status": "ok"}


class Readiness(TypedDict):
    """Each check: true, or what is wrong."""

    status: Literal["ready", "not ready"]
    checks: dict[str, bool | str]


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Redis or the ledger is not ready"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when Redis answers and the ledger is reachable and migrated."""
    billing: Billing = request.app.state.billing
    checks: dict[str, Any] = {
        "redis": await _check(request.app.state.redis.ping()),
        "ledger": await _check(_ledger_at_head(billing)),
    }
    ready = all(value is True for value in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


async def _ledger_at_head(billing: Billing) -> bool | str:
    at = await migrate.current(billing.engine)
    return True if at == migrate.HEAD else f"not migrated (at {at}): run `tokengate billing migrate`"


async def _check(probe: Any) -> bool | str:
    try:
        result = await asyncio.wait_for(probe, CHECK_TIMEOUT_S)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S:g}s"
    except Exception as exc:  # any failure means not ready; say which
        return f"unreachable: {exc.__class__.__name__}"
    return result if isinstance(result, str) else bool(result)
