"""The credit cap's periods: the Lua computation (lib_v3.lua's cap_period, from Redis time)
and its Python twin (gateway/quota/periods.py) give the same ids at day, month and year
boundaries, leap days and centuries included, and both agree with the calendar."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from importlib import resources

import pytest

from gateway.quota.periods import DAY_MS, period_id, period_start_ms
from gateway.quota.scripts import LIB, RedisClient

PROBE = """
local out = {}
for i = 2, #ARGV do out[#out + 1] = cap_period(ARGV[1], tonumber(ARGV[i])) end
return out
"""
END_MS = int(datetime(2400, 12, 31, tzinfo=UTC).timestamp()) * 1000


def lua_source() -> str:
    return (resources.files("gateway.quota") / "lua" / f"{LIB}.lua").read_text() + PROBE


async def lua_periods(client: RedisClient, kind: str, instants: list[int]) -> list[str]:
    reply = await client.eval(lua_source(), 0, kind, *instants)  # type: ignore[misc]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in reply]


def ms(at: datetime) -> int:
    return int(at.timestamp()) * 1000 + at.microsecond // 1000


def boundaries() -> list[datetime]:
    """Each month's first instant and the last millisecond before it, in years that matter:
    the epoch, leap years, a century that is not one (2100) and ones that are (2000, 2400)."""
    out: list[datetime] = []
    for year in (1970, 1971, 1999, 2000, 2023, 2024, 2025, 2100, 2400):
        for month in range(1, 13):
            start = datetime(year, month, 1, tzinfo=UTC)
            out += [start, start + timedelta(hours=12)]
            if start.year > 1970 or month > 1:
                out.append(start - timedelta(milliseconds=1))
    out += [datetime(y, 2, 29, 23, 59, 59, 999_000, tzinfo=UTC) for y in (2000, 2024, 2400)]
    out += [datetime(2100, 2, 28, 23, 59, 59, 999_000, tzinfo=UTC)]
    return out


async def test_lua_and_python_agree_with_the_calendar_at_boundaries(client: RedisClient) -> None:
    instants = boundaries()
    at_ms = [ms(at) for at in instants]
    months = await lua_periods(client, "month", at_ms)
    days = await lua_periods(client, "day", at_ms)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for at, now, month, day in zip(instants, at_ms, months, days, strict=True):
        assert month == f"m{at.year * 12 + at.month - 1}" == period_id("month", now), at
        assert day == f"d{(at - epoch).days}" == period_id("day", now), at
    assert await lua_periods(client, "total", at_ms[:3]) == ["t"] * 3
    assert await lua_periods(client, "fortnight", at_ms[:1]) == ["t"]  # unknown: never resets


@pytest.mark.parametrize("kind", ["day", "month", "total"])
def test_a_period_starts_where_its_id_changes(kind: str) -> None:
    for at in boundaries():
        now = ms(at)
        start = period_start_ms(kind, now)
        assert start <= now and period_id(kind, start) == period_id(kind, now)
        if start > 0:
            assert period_id(kind, start - 1) != period_id(kind, now)
        else:  # only 'total', and the days and month that begin at the epoch, start at 0
            assert kind == "total" or now < 31 * DAY_MS
    leap_day = ms(datetime(2024, 2, 29, 13, tzinfo=UTC))
    assert period_start_ms("month", leap_day) == ms(datetime(2024, 2, 1, tzinfo=UTC))
    assert period_start_ms("day", 5 * DAY_MS + 7) == 5 * DAY_MS


async def test_lua_and_python_agree_anywhere(client: RedisClient) -> None:
    """Instants drawn at random from 1970 to 2400 (a fixed seed: a failure repeats)."""
    draw = random.Random(20240229)
    instants = [draw.randrange(END_MS) for _ in range(4000)]
    for kind in ("day", "month"):
        assert await lua_periods(client, kind, instants) == [period_id(kind, now) for now in instants]
