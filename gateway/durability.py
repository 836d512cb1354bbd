"""Warn at start when the Redis in use can lose settled usage on a crash.

Between settlement and the billing worker's commit, the usage stream is the only copy of
what a customer used; see docs/operations.md.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from gateway.keyspace import reply_text
from gateway.quota.scripts import RedisClient

log = logging.getLogger("tokengate")


def durability_warning(config: dict[str, str]) -> str | None:
    """The risk a Redis configuration (CONFIG GET answers) leaves, or None if durable."""
    if config.get("appendonly") != "yes":
        return ("Redis runs without AOF (appendonly no): a Redis crash loses the usage events "
                "settled since the last snapshot; set appendonly yes, appendfsync always")
    if config.get("appendfsync") != "always":
        return (f"Redis appendfsync is {config.get('appendfsync')!r}: a Redis crash can lose "
                "about a second of settled usage; appendfsync always loses none")
    return None


async def check_durability(redis: RedisClient) -> str | None:
    """Log (and return) the durability risk of the connected Redis, if any."""
    try:
        raw = await redis.config_get("append*")
    except (RedisError, OSError) as exc:  # managed Redis may refuse CONFIG
        log.warning("cannot read the Redis persistence settings (%s); make sure AOF is on",
                    exc.__class__.__name__)
        return None
    config = {reply_text(k): reply_text(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    warning = durability_warning(config)
    if warning:
        log.warning(warning)
    return warning
