"""What the control plane sees of the data plane, and asks of it, through Redis.

The planes are separate processes (often separate hosts) and the data plane has no
private listener, so they meet where they already meet: Redis. Every data-plane worker
publishes what its router knows of the endpoints (``GET /admin/endpoints`` merges the
reports), and watches a catalog generation the control plane bumps when an admin asks
for models.yaml to be reloaded (``POST /admin/config/reload``): every worker reloads,
not only the one a request happened to reach.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import Any

import orjson

from gateway.keyspace import PREFIX, reply_text
from gateway.quota.scripts import RedisClient

ROUTING_KEY = f"{PREFIX}:ops:routing"  # HASH worker -> {"at": ms, "data": [...], "router": {...}}
CATALOG_KEY = f"{PREFIX}:ops:catalog"  # STRING: the catalog generation, bumped on reload
REPORT_SECONDS = 1.0  # how often a worker publishes its report and checks the generation
STALE_MS = 5_000  # a report older than this is from a worker that is gone
_SUMMED = ("in_flight", "requests", "failures", "ejections")


def worker_id() -> str:
    """This process among all data-plane workers (host and pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _now_ms() -> int:
    return int(time.time() * 1000)


async def publish_routing(redis: RedisClient, worker: str, report: dict[str, Any]) -> None:
    await redis.hset(ROUTING_KEY, worker, orjson.dumps({"at": _now_ms(), **report}))


async def withdraw_routing(redis: RedisClient, worker: str) -> None:
    await redis.hdel(ROUTING_KEY, worker)


async def catalog_generation(redis: RedisClient) -> int:
    value = await redis.get(CATALOG_KEY)
    return int(reply_text(value)) if value is not None else 0


async def request_reload(redis: RedisClient) -> int:
    """Ask every data-plane worker to reload models.yaml (within ``REPORT_SECONDS``)."""
    return int(await redis.incr(CATALOG_KEY))


async def routing_reports(redis: RedisClient) -> list[dict[str, Any]]:
    """The live workers' reports, freshest first; reports of workers gone are removed."""
    now, live, stale = _now_ms(), [], []
    for worker, raw in (await redis.hgetall(ROUTING_KEY)).items():
        report = orjson.loads(raw)
        if now - int(report.get("at", 0)) > STALE_MS:
            stale.append(worker)
        else:
            live.append(report)
    if stale:
        await redis.hdel(ROUTING_KEY, *stale)
    return sorted(live, key=lambda report: -int(report["at"]))


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One view over the workers: an endpoint's counters summed, its state as most workers
    see it (each worker routes on its own view; ``states`` counts them); ``as_of_ms`` is
    when the oldest of the reports was made (Unix milliseconds)."""
    rows: dict[str, dict[str, Any]] = {}
    states: dict[str, Counter[str]] = {}
    router: dict[str, Any] = {"failovers": 0, "panics": 0}
    for report in reports:  # freshest first: its fields win where they are not summed
        for row in report.get("data", []):
            url = row["url"]
            states.setdefault(url, Counter())[row["state"]] += 1
            merged = rows.get(url)
            if merged is None:
                rows[url] = dict(row)
                continue
            for name in _SUMMED:
                merged[name] = int(merged.get(name) or 0) + int(row.get(name) or 0)
        seen = report.get("router", {})
        for name in ("failovers", "panics"):
            router[name] += int(seen.get(name) or 0)
        for name in ("filters", "scorers", "picker"):
            router.setdefault(name, seen.get(name))
    for url, row in rows.items():
        row["state"] = states[url].most_common(1)[0][0]
        row["states"] = dict(states[url])
    as_of = min((int(report["at"]) for report in reports), default=None)
    return {"data": list(rows.values()), "router": router, "workers": len(reports), "as_of_ms": as_of}
