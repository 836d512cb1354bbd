"""An account's alert settings (``account_alerts``): where its webhooks go and when to alert.

The signing secret exists exactly while a URL does: it is generated when a URL is first set
(or on ``rotate_secret``), shown in that one answer, and dropped with the URL. Changing the
URL keeps it, so a receiver that moves need not change its key.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing import audit
from billing.alert_urls import check_url
from billing.clock import ms_to_iso
from billing.db.engine import transaction
from billing.db.schema import account_alerts
from billing.records import AlertSettings
from gateway.contract import BadRequest

SECRET_PREFIX = "tga_"
FIELDS = ("url", "low_balance", "expiry_days")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _shown(account_id: str, row: Any) -> AlertSettings:
    if row is None:
        return {
            "account_id": account_id,
            "url": None,
            "low_balance": None,
            "expiry_days": None,
            "updated_at": None,
        }
    return {
        "account_id": account_id,
        "url": row.url,
        "low_balance": None if row.low_balance is None else int(row.low_balance),
        "expiry_days": row.expiry_days,
        "updated_at": ms_to_iso(row.updated_at_ms),
    }


async def read_settings(engine: AsyncEngine, account_id: str) -> AlertSettings:
    """The settings without the secret (all null when never set)."""
    async with transaction(engine) as conn:
        row = (
            await conn.execute(select(account_alerts).where(account_alerts.c.account_id == account_id))
        ).first()
    return _shown(account_id, row)


async def write_settings(
    engine: AsyncEngine,
    account_id: str,
    changes: dict[str, Any],
    *,
    rotate_secret: bool,
    allow_private: bool,
    now_ms: int,
    actor: str | None = None,
) -> AlertSettings:
    """Apply ``changes`` (absent: kept, None: cleared) to an existing account's settings;
    with an ``actor``, the audit log records the change (never the secret) in the same
    transaction. BadRequest for a URL alerts may not reach, or a rotation without a URL.
    """
    url = changes.get("url")
    if url is not None:
        try:
            check_url(url, allow_private=allow_private)
        except ValueError as error:
            raise BadRequest(f"url refused: {error}", code="invalid_url", param="url") from None
    async with transaction(engine) as conn:
        row = await _locked_row(conn, account_id, now_ms)
        values = {name: changes.get(name, getattr(row, name)) for name in FIELDS}
        secret: str | None = row.secret
        generated = False
        if values["url"] is None:
            if rotate_secret:
                raise BadRequest("there is no url to sign for: set one first", param="rotate_secret")
            secret = None
        elif secret is None or rotate_secret:
            secret, generated = new_secret(), True
        await conn.execute(
            update(account_alerts)
            .where(account_alerts.c.account_id == account_id)
            .values(**values, secret=secret, updated_at_ms=now_ms)
        )
        row = (
            await conn.execute(select(account_alerts).where(account_alerts.c.account_id == account_id))
        ).one()
        if actor is not None:
            detail = {**values, "secret": "generated" if generated else ("kept" if secret else None)}
            await audit.record(
                conn,
                at_ms=now_ms,
                actor=actor,
                action="alerts.update",
                target=f"account:{account_id}",
                detail=detail,
            )
    shown = _shown(account_id, row)
    if generated and secret is not None:
        shown["secret"] = secret
    return shown


async def _locked_row(conn: AsyncConnection, account_id: str, now_ms: int) -> Any:
    """The account's row, created empty if missing, locked until the transaction ends (two
    concurrent writes queue: neither loses the secret the other generated)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(
        dialect.insert(account_alerts)
        .values(account_id=account_id, updated_at_ms=now_ms)
        .on_conflict_do_nothing(index_elements=["account_id"])
    )
    query = select(account_alerts).where(account_alerts.c.account_id == account_id).with_for_update()
    return (await conn.execute(query)).one()
