"""The admin's lists: accounts (searched by name or id, newest first, paged) and an account's keys.

Accounts are ordered by ``created_at_ms`` then ``id``, both descending, and paged by an
opaque cursor naming the last account of a page (URL-safe base64 of
``[created_at_ms, id]``), so a page never repeats or skips an account while new ones are
created. A cursor that is not one of ours is refused (400), never handed to the database.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.accounts import public_key
from billing.clock import ms_to_iso
from billing.db.engine import transaction
from billing.db.schema import accounts, api_keys
from billing.records import Account, AccountPage, ApiKey
from gateway.contract import BadRequest

MAX_ACCOUNTS = 500
MAX_MS = 2**63 - 1  # BIGINT
_BAD_CURSOR = "not a cursor of this listing"


def account_of(row: Any) -> Account:
    """An account as ``POST /admin/accounts`` answers it."""
    return {"id": row.id, "name": row.name, "created_at": ms_to_iso(row.created_at_ms)}


def encode_cursor(created_at_ms: int, account_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([created_at_ms, account_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """``(created_at_ms, id)`` of a cursor; BadRequest for anything else."""
    try:
        raw = cursor.encode("ascii")
        value = orjson.loads(base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise BadRequest(_BAD_CURSOR, param="cursor") from None
    if not (isinstance(value, list) and len(value) == 2):
        raise BadRequest(_BAD_CURSOR, param="cursor")
    at, account_id = value
    if not (isinstance(at, int) and not isinstance(at, bool) and 0 <= at <= MAX_MS):
        raise BadRequest(_BAD_CURSOR, param="cursor")
    if not (isinstance(account_id, str) and 0 < len(account_id) <= 64 and account_id.isprintable()):
        raise BadRequest(_BAD_CURSOR, param="cursor")
    return at, account_id


def _searchable(q: str) -> str:
    q = q.strip()
    if len(q) > 200 or not q.isprintable():
        raise BadRequest("q is up to 200 printable characters", param="q")
    return q


async def list_accounts(
    engine: AsyncEngine, q: str | None = None, limit: int = 50, cursor: str | None = None
) -> AccountPage:
    """``{"data": [accounts], "next_cursor": str | None}``, newest first.

    ``q`` matches a case-insensitive substring of the name or the exact id.
    """
    if not 1 <= limit <= MAX_ACCOUNTS:
        raise BadRequest(f"limit must be between 1 and {MAX_ACCOUNTS}", param="limit")
    c = accounts.c
    query = select(accounts)
    if q is not None and (text := _searchable(q)):
        query = query.where(or_(c.name.icontains(text, autoescape=True), c.id == text))
    if cursor:
        at, last_id = decode_cursor(cursor)
        query = query.where(or_(c.created_at_ms < at, and_(c.created_at_ms == at, c.id < last_id)))
    query = query.order_by(c.created_at_ms.desc(), c.id.desc()).limit(limit + 1)
    async with transaction(engine) as conn:
        rows = list(await conn.execute(query))
    more, rows = len(rows) > limit, rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at_ms, rows[-1].id) if more and rows else None
    return {"data": [account_of(r) for r in rows], "next_cursor": next_cursor}


async def list_keys(engine: AsyncEngine, account_id: str) -> list[ApiKey] | None:
    """The account's keys that are not revoked, oldest first, without secrets; None: no account."""
    k = api_keys.c
    if not (0 < len(account_id) <= 64 and account_id.isprintable()):
        return None  # never an id of ours (and PostgreSQL refuses a NUL in text)
    async with transaction(engine) as conn:
        if (await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))).first() is None:
            return None
        rows = await conn.execute(
            select(api_keys)
            .where(k.account_id == account_id, k.revoked_at_ms.is_(None))
            .order_by(k.created_at_ms, k.id)
        )
        return [public_key(r) for r in rows]
