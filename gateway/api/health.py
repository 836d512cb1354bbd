"""Liveness, readiness and Prometheus metrics of a data-plane process (plain ASGI)."""

from __future__ import annotations

import asyncio

from prometheus_client import CONTENT_TYPE_LATEST

from gateway.asgi import Send, send_bytes, send_json
from gateway.state import GatewayState

READY_TIMEOUT_S = 1.0


async def healthz(send: Send, request_id: str) -> None:
    """The process is up and serving HTTP."""
    await send_json(send, 200, {"status": "ok"}, request_id)


async def readyz(state: GatewayState, send: Send, request_id: str) -> None:
    """Ready when Redis answers and the catalog has at least one model with endpoints."""
    checks: dict[str, object] = {"redis": await redis_check(state.redis)}
    checks["models"] = len(state.pipeline.catalog.models)
    ready = checks["redis"] is True and checks["models"] != 0
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    await send_json(send, 200 if ready else 503, body, request_id)


async def redis_check(redis: object) -> bool | str:
    """True when Redis answers a PING in time, else why not (a silent Redis must not hold
    the probe longer than probes wait)."""
    try:
        return bool(await asyncio.wait_for(redis.ping(), READY_TIMEOUT_S))  # type: ignore[attr-defined]
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT_S:g}s"
    except Exception as exc:  # any failure means not ready; say which
        return f"unreachable: {exc.__class__.__name__}"


async def metrics(state: GatewayState, send: Send, request_id: str) -> None:
    await send_bytes(send, 200, state.metrics.render(), request_id,
                     [(b"content-type", CONTENT_TYPE_LATEST.encode())])
