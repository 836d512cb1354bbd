"""The audit log: who changed what, when. Every admin write (recorded by the control plane's
admin door once it has answered) and every change of an order's state (recorded in the
transaction that makes it, so the log and the order never disagree).

Actors: ``admin`` (the admin credential), ``account:<id>`` (a customer's key or session),
``provider:<name>`` (a payment provider's webhook), ``system`` (expiry, sweeps).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import and_, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing.clock import ms_to_iso
from billing.db.engine import transaction
from billing.db.schema import audit_log
from billing.directory import decode_cursor, encode_cursor
from billing.records import AuditEntry, AuditPage
from gateway.contract import BadRequest

MAX_ENTRIES = 500


async def record(
    conn: AsyncConnection, *, at_ms: int, actor: str, action: str, target: str, detail: Any = None
) -> None:
    """One line of the log, in the caller's transaction (text cut to its column, NULs replaced:
    a target may come from a hostile request)."""
    await conn.execute(
        insert(audit_log).values(
            at_ms=at_ms, actor=_text(actor, 200), action=_text(action, 64), target=_text(target, 300),
            detail=detail,
        )
    )


def _text(value: str, limit: int) -> str:
    return value[:limit].replace("\x00", "\ufffd")


async def record_now(engine: AsyncEngine, **line: Any) -> None:
    """One line in a transaction of its own (for a change made elsewhere, already answered)."""
    async with transaction(engine) as conn:
        await record(conn, **line)


def body_detail(body: bytes, limit: int = 2000) -> Any:
    """A request body as the log keeps it: JSON as JSON, anything else as (cut) text."""
    try:
        return orjson.loads(body) if len(body) <= limit else body[:limit].decode("utf-8", "replace")
    except orjson.JSONDecodeError:
        return body[:limit].decode("utf-8", "replace") or None


def entry_of(row: Any) -> AuditEntry:
    return {
        "id": int(row.id),
        "at": ms_to_iso(row.at_ms),
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "detail": row.detail,
    }


async def audit_page(
    engine: AsyncEngine,
    *,
    target: str | None = None,
    action: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> AuditPage:
    """Newest first; ``target`` (``order:ord_..``) and ``action`` (``order.paid``) filter exactly."""
    if not 1 <= limit <= MAX_ENTRIES:
        raise BadRequest(f"limit must be between 1 and {MAX_ENTRIES}", param="limit")
    c = audit_log.c
    query = select(audit_log)
    if target:
        query = query.where(c.target == target)
    if action:
        query = query.where(c.action == action)
    if cursor:
        at, last = decode_cursor(cursor)
        if not (last.isascii() and last.isdigit() and len(last) <= 18):  # a BIGINT id
            raise BadRequest("not a cursor of this listing", param="cursor")
        query = query.where(or_(c.at_ms < at, and_(c.at_ms == at, c.id < int(last))))
    query = query.order_by(c.at_ms.desc(), c.id.desc()).limit(limit + 1)
    async with transaction(engine) as conn:
        rows = list(await conn.execute(query))
    more, rows = len(rows) > limit, rows[:limit]
    next_cursor = encode_cursor(rows[-1].at_ms, str(rows[-1].id)) if more and rows else None
    return {"data": [entry_of(r) for r in rows], "next_cursor": next_cursor}
