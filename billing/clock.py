"""Time for billing: integer milliseconds since the epoch, injectable for tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from gateway.contract import iso_to_ms, ms_to_iso

__all__ = ["DAY_MS", "Clock", "day_of", "iso_to_ms", "ms_to_iso", "wall_ms"]

Clock = Callable[[], int]
DAY_MS = 86_400_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def day_of(ms: int) -> str:
    """The UTC date of a time, ``YYYY-MM-DD``."""
    return datetime.fromtimestamp(ms // DAY_MS * 86_400, UTC).date().isoformat()
