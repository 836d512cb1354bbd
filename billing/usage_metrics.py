"""The usage pipeline's gauges for the operator (``GET /admin/metrics``), read from Redis at
each scrape: how much usage waits for the ledger, and how much the billing worker set aside.

They come from Redis, not the ledger, so they answer while the database is down, which is
when the backlog grows (docs/operations.md, "When something fails").
"""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from billing.streams import backlog
from gateway.contract import RedisClient, dead_letter_key, keyspace


async def usage_families(redis: RedisClient) -> list[Metric]:
    """Usage events not yet recorded (undelivered and pending) and dead letters."""
    waiting = GaugeMetricFamily(
        "tokengate_usage_backlog",
        "Usage events in the Redis streams not yet recorded in the ledger (grows while the "
        "billing worker or the database is away; drains when they are back)",
    )
    waiting.add_metric([], await backlog(redis))
    dead = GaugeMetricFamily(
        "tokengate_usage_dead_letters",
        "Usage events the billing worker could not record and set aside with the reason "
        "(the shards' dead-letter streams): should stay 0",
    )
    dead.add_metric([], sum([int(await redis.xlen(dead_letter_key(shard)))
                             for shard in range(keyspace.USAGE_SHARDS)]))
    return [waiting, dead]
