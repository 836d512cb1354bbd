"""Usage records out of the ledger: pages of records, totals by day/model/key, CSV export.

Records come newest first (``finished_at``, then request id), paged by an opaque cursor
that names the last record of the page, so a page never repeats or skips a record while
new ones arrive. Grouped answers are ordered by their group fields and paged by offset.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.clock import DAY_MS, day_of, ms_to_iso
from billing.db.engine import transaction
from billing.db.schema import usage_records
from billing.records import UsageGroup, UsagePage, UsageRecord
from gateway.contract import BadRequest

GROUPS = {"day": "day", "model": "model", "key": "key_id"}
RECORD_FIELDS = (
    "request_id",
    "account_id",
    "key_id",
    "model",
    "cluster",
    "endpoint",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "charge",
    "uncollected",
    "status",
    "counted_by",
    "stream",
    "started_at",
    "finished_at",
)
MAX_LIMIT = 1000
c = usage_records.c


@dataclass(frozen=True, slots=True)
class UsageQuery:
    account_id: str | None  # None: every account (the admin export)
    from_ms: int | None = None  # inclusive
    to_ms: int | None = None  # exclusive
    group_by: tuple[str, ...] = ()
    limit: int = 100
    cursor: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.group_by) - set(GROUPS)
        if unknown:
            raise BadRequest(f"group_by takes day, model, key; not {sorted(unknown)}", param="group_by")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", param="limit")


def _encode(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode()


_BAD_CURSOR = "not a cursor of this listing"
_MAX_INT = 2**63 - 1  # BIGINT: a larger bound would fail in the database, not here
_MAX_OFFSET = 10**9


def _decode(cursor: str) -> Any:
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest(_BAD_CURSOR, param="cursor") from None


def _position(cursor: str) -> tuple[int, str]:
    """``(finished_at_ms, request_id)`` of a page cursor; BadRequest for anything else (a
    crafted cursor is refused here, never handed to the database)."""
    value = _decode(cursor)
    if not (isinstance(value, list) and len(value) == 2):
        raise BadRequest(_BAD_CURSOR, param="cursor")
    finished, request_id = value
    if not (isinstance(finished, int) and not isinstance(finished, bool) and 0 <= finished <= _MAX_INT):
        raise BadRequest(_BAD_CURSOR, param="cursor")
    if not (isinstance(request_id, str) and 0 < len(request_id) <= 200 and request_id.isprintable()):
        raise BadRequest(_BAD_CURSOR, param="cursor")
    return finished, request_id


def _offset(cursor: str) -> int:
    """The offset of a grouped listing's cursor; BadRequest for anything else."""
    value = _decode(cursor)
    offset = value.get("offset") if isinstance(value, dict) else None
    if not (isinstance(offset, int) and not isinstance(offset, bool) and 0 <= offset <= _MAX_OFFSET):
        raise BadRequest(_BAD_CURSOR, param="cursor")
    return offset


_COLUMNS = RECORD_FIELDS[: RECORD_FIELDS.index("started_at")]  # read as they are stored
SUMS = ("requests", "prompt_tokens", "completion_tokens", "charge", "uncollected")


def record(row: Any) -> UsageRecord:
    out: dict[str, Any] = {name: getattr(row, name) for name in _COLUMNS}
    out["stream"] = bool(out["stream"])
    out["started_at"] = ms_to_iso(row.started_at_ms)
    out["finished_at"] = ms_to_iso(row.finished_at_ms)
    return cast(UsageRecord, out)


def _filtered(query: Select[Any], q: UsageQuery) -> Select[Any]:
    if q.account_id is not None:
        query = query.where(c.account_id == q.account_id)
    if q.from_ms is not None:
        query = query.where(c.finished_at_ms >= q.from_ms)
    if q.to_ms is not None:
        query = query.where(c.finished_at_ms < q.to_ms)
    return query


def _after(cursor: tuple[int, str]) -> Any:
    finished, request_id = cursor
    return or_(c.finished_at_ms < finished, and_(c.finished_at_ms == finished, c.request_id < request_id))


async def usage_page(engine: AsyncEngine, q: UsageQuery) -> UsagePage:
    """``{"data": [...], "next_cursor": str | None}``."""
    if q.group_by:
        return await _grouped(engine, q)
    query = _filtered(select(usage_records), q)
    if q.cursor:
        query = query.where(_after(_position(q.cursor)))
    query = query.order_by(c.finished_at_ms.desc(), c.request_id.desc()).limit(q.limit + 1)
    async with transaction(engine) as conn:
        rows = list(await conn.execute(query))
    more, rows = len(rows) > q.limit, rows[: q.limit]
    last = rows[-1] if rows else None
    next_cursor = _encode([last.finished_at_ms, last.request_id]) if more and last else None
    return {"data": [record(r) for r in rows], "next_cursor": next_cursor}


async def _grouped(engine: AsyncEngine, q: UsageQuery) -> UsagePage:
    offset = 0
    if q.cursor:
        offset = _offset(q.cursor)
    columns = {"day": (c.finished_at_ms // DAY_MS).label("day"), "model": c.model, "key": c.key_id}
    keys = [columns[g] for g in q.group_by]
    query = _filtered(
        select(
            *keys,
            func.count().label("requests"),
            func.sum(c.prompt_tokens).label("prompt_tokens"),
            func.sum(c.completion_tokens).label("completion_tokens"),
            func.sum(c.charge).label("charge"),
            func.sum(c.uncollected).label("uncollected"),
        ),
        q,
    ).group_by(*keys)
    order = [k.desc() if g == "day" else k for g, k in zip(q.group_by, keys, strict=True)]
    query = query.order_by(*order).offset(offset).limit(q.limit + 1)
    async with transaction(engine) as conn:
        rows = list(await conn.execute(query))
    more, rows = len(rows) > q.limit, rows[: q.limit]
    data: list[UsageGroup] = []
    for row in rows:
        item: dict[str, Any] = {}
        for group in q.group_by:
            value = getattr(row, GROUPS[group])
            item[group] = day_of(int(value) * DAY_MS) if group == "day" else value
        for name in SUMS:
            item[name] = int(getattr(row, name) or 0)
        data.append(cast(UsageGroup, item))
    next_cursor = _encode({"offset": offset + q.limit}) if more else None
    return {"data": data, "next_cursor": next_cursor}


def _csv_value(value: Any) -> Any:
    """Booleans as JSON writes them (``true``/``false``), not as Python's ``True``."""
    return ("true" if value else "false") if isinstance(value, bool) else value


async def export_csv(engine: AsyncEngine, q: UsageQuery, batch: int = 1000) -> AsyncIterator[bytes]:
    """The records of ``q`` as CSV (a header line, then newest first), in batches."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RECORD_FIELDS)
    cursor: str | None = None
    while True:
        page = await usage_page(engine, UsageQuery(q.account_id, q.from_ms, q.to_ms, (), batch, cursor))
        for item in page["data"]:
            values = cast(dict[str, Any], item)
            writer.writerow([_csv_value(values[name]) for name in RECORD_FIELDS])
        yield out.getvalue().encode()
        out.seek(0)
        out.truncate()
        cursor = page["next_cursor"]
        if cursor is None:
            return
