"""The periods of per-key credit caps, as ``lua/lib_v3.lua`` computes them from Redis time.

A cap counts credits per UTC calendar day, per UTC calendar month, or in total. Admission
and settlement name the current period by an id ('d<days since 1970-01-01>',
'm<year * 12 + month - 1>', 't') and start a new one at 0. Billing needs the same ids and
the instant each period starts, to count a key's spending in the ledger since then
(reconcile, a cap set on a key that already spent): this module is that twin, and a test
holds the two to the same answers at day, month and year boundaries.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, TypeAlias

CreditPeriod: TypeAlias = Literal["day", "month", "total"]
PERIODS: tuple[CreditPeriod, ...] = ("day", "month", "total")
DAY_MS = 86_400_000


def period_id(kind: str, now_ms: int) -> str:
    """The id of the period of ``kind`` that holds ``now_ms`` (an unknown kind: 'total')."""
    if kind == "day":
        return f"d{now_ms // DAY_MS}"
    if kind == "month":
        at = datetime.fromtimestamp(now_ms // 1000, UTC)
        return f"m{at.year * 12 + at.month - 1}"
    return "t"


def period_start_ms(kind: str, now_ms: int) -> int:
    """When the period of ``kind`` that holds ``now_ms`` began (0 for 'total')."""
    if kind == "day":
        return now_ms - now_ms % DAY_MS
    if kind == "month":
        at = datetime.fromtimestamp(now_ms // 1000, UTC)
        return int(datetime(at.year, at.month, 1, tzinfo=UTC).timestamp()) * 1000
    return 0
