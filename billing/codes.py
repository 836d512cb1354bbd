"""Redemption codes: admins mint batches for a package; a customer redeems a code once.

Exactly once under any concurrency, on SQLite and PostgreSQL alike: the code is claimed by
a conditional UPDATE (still unredeemed, not expired) whose row count says who won, and the
winner's grant, its ledger entry (order id ``code:<code id>``) and the audit line are
written in that same transaction. A loser's UPDATE matches nothing (PostgreSQL re-reads the
row once the winner commits; SQLite's writers queue), so it answers 409. Redis is credited
after the commit (``PackageService.apply``); if the process dies in between, ``reconcile``
applies the grant Redis lacks, as for any purchase.

Failed attempts (unknown, expired, used) count against the account and the client's
address (``billing.code_attempts``); past the limit every attempt is refused before any
lookup. Only hashes are stored (``billing.code_format``); listings never show them.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from billing import audit
from billing.clock import DAY_MS, Clock, ms_to_iso, wall_ms
from billing.code_attempts import FailureLimiter
from billing.code_format import canonical, code_hash, new_code
from billing.db.engine import transaction
from billing.db.schema import ADJUSTMENT_PACKAGE, packages, redemption_codes
from billing.directory import decode_cursor, encode_cursor
from billing.errors import Conflict
from billing.packages import PackageService, grant_of, insert_grant
from billing.records import CodePage, CodeStatus, Grant, IssuedCode, IssuedCodes, RedemptionCode
from gateway.contract import BadRequest, NotFound

MAX_BATCH = 10_000
MAX_VALID_DAYS = 36_500
MAX_PAGE = 1000
STATUSES: tuple[CodeStatus, ...] = ("unused", "redeemed", "expired")

rc = redemption_codes.c


def status_of(row: Any, now_ms: int) -> CodeStatus:
    if row.redeemed_at_ms is not None:
        return "redeemed"
    if row.expires_at_ms is not None and row.expires_at_ms <= now_ms:
        return "expired"
    return "unused"


def _iso(ms: int | None) -> str | None:
    return None if ms is None else ms_to_iso(ms)


def code_of(row: Any, now_ms: int) -> RedemptionCode:
    return {
        "id": row.id,
        "batch_id": row.batch_id,
        "package_id": row.package_id,
        "status": status_of(row, now_ms),
        "created_at": ms_to_iso(row.created_at_ms),
        "expires_at": _iso(row.expires_at_ms),
        "redeemed_at": _iso(row.redeemed_at_ms),
        "redeemed_by": row.redeemed_by,
        "grant_id": row.grant_id,
    }


def _redeemable(now_ms: int) -> ColumnElement[bool]:
    return and_(rc.redeemed_at_ms.is_(None), or_(rc.expires_at_ms.is_(None), rc.expires_at_ms > now_ms))


def _with_status(status: CodeStatus, now_ms: int) -> ColumnElement[bool]:
    if status == "unused":
        return _redeemable(now_ms)
    if status == "redeemed":
        return rc.redeemed_at_ms.is_not(None)
    return and_(rc.redeemed_at_ms.is_(None), rc.expires_at_ms <= now_ms)


def _ident(value: str | None, param: str) -> str | None:
    if value is not None and not (0 < len(value) <= 64 and value.isprintable()):
        raise BadRequest(f"{param} is an id of up to 64 printable characters", param=param)
    return value


class CodeService:
    def __init__(
        self, engine: AsyncEngine, packages: PackageService, limiter: FailureLimiter, clock: Clock = wall_ms
    ) -> None:
        self.engine = engine
        self.packages = packages
        self.limiter = limiter
        self.clock = clock

    async def mint(self, package_id: str, count: int, valid_days: int | None = None) -> IssuedCodes:
        """A batch of ``count`` new codes for a package; their secrets are in this answer only."""
        if package_id == ADJUSTMENT_PACKAGE:
            raise BadRequest("the adjustment package is internal: codes cannot grant it", param="package_id")
        if not 1 <= count <= MAX_BATCH:
            raise BadRequest(f"count must be between 1 and {MAX_BATCH}", param="count")
        if valid_days is not None and not 1 <= valid_days <= MAX_VALID_DAYS:
            raise BadRequest(f"valid_days must be between 1 and {MAX_VALID_DAYS}", param="valid_days")
        _ident(package_id, "package_id")
        now = self.clock()
        expires = None if valid_days is None else now + valid_days * DAY_MS
        batch_id = "cb_" + secrets.token_hex(8)
        codes = [new_code() for _ in range(count)]
        rows = [
            {
                "id": "rc_" + secrets.token_hex(8),
                "code_hash": code_hash(canonical(code) or ""),
                "batch_id": batch_id,
                "package_id": package_id,
                "created_at_ms": now,
                "expires_at_ms": expires,
            }
            for code in codes
        ]
        async with transaction(self.engine) as conn:
            if (await conn.execute(select(packages.c.id).where(packages.c.id == package_id))).first() is None:
                raise NotFound(f"no package {package_id!r}", param="package_id")
            await conn.execute(redemption_codes.insert(), rows)
            await audit.record(
                conn,
                at_ms=now,
                actor="admin",
                action="code.minted",
                target=f"batch:{batch_id}",
                detail={"package_id": package_id, "count": count, "expires_at": _iso(expires)},
            )
        issued: list[IssuedCode] = [
            {"code": code, "package_id": package_id, "expires_at": _iso(expires)} for code in codes
        ]
        return {"data": issued, "batch_id": batch_id}

    async def list_codes(
        self,
        *,
        package_id: str | None = None,
        status: CodeStatus | None = None,
        batch_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> CodePage:
        """Codes' state, newest first, paged by an opaque cursor; never a secret or a hash."""
        if not 1 <= limit <= MAX_PAGE:
            raise BadRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status is one of {', '.join(STATUSES)}", param="status")
        now = self.clock()
        columns = [c for c in redemption_codes.c if c.name != "code_hash"]
        query = select(*columns)
        if _ident(package_id, "package_id"):
            query = query.where(rc.package_id == package_id)
        if _ident(batch_id, "batch_id"):
            query = query.where(rc.batch_id == batch_id)
        if status is not None:
            query = query.where(_with_status(status, now))
        if cursor:
            at, last = decode_cursor(cursor)
            query = query.where(or_(rc.created_at_ms < at, and_(rc.created_at_ms == at, rc.id < last)))
        query = query.order_by(rc.created_at_ms.desc(), rc.id.desc()).limit(limit + 1)
        async with transaction(self.engine) as conn:
            rows = list(await conn.execute(query))
        more, rows = len(rows) > limit, rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at_ms, rows[-1].id) if more and rows else None
        return {"data": [code_of(r, now) for r in rows], "next_cursor": next_cursor}

    async def redeem(self, account_id: str, typed: str, bucket: str) -> Grant:
        """The grant a code makes for the account, once; ``bucket`` is the client's address
        as limits count it. RateLimited past the failures allowed; NotFound for an unknown
        or expired code, Conflict for a used one (each counted as a failure)."""
        await self.limiter.check(account_id, bucket)
        symbols = canonical(typed)
        grant: Any = None
        failure: Exception = NotFound("no such redemption code", code="code_not_found", param="code")
        if symbols is not None:
            digest, now = code_hash(symbols), self.clock()
            async with transaction(self.engine) as conn:
                grant = await self._claim(conn, account_id, digest, now, bucket)
                if grant is None:
                    failure = await _why_not(conn, digest, now)
        if grant is None:
            await self.limiter.failed(account_id, bucket)
            raise failure
        await self.packages.apply(grant)  # after the commit; reconcile covers a crash before it
        return grant_of(grant)

    async def _claim(self, conn: AsyncConnection, account_id: str, digest: str, now: int, bucket: str) -> Any:
        """The code's grant if this transaction claimed it; None if it cannot be claimed."""
        claim = (
            update(redemption_codes)
            .where(rc.code_hash == digest, _redeemable(now))
            .values(redeemed_at_ms=now, redeemed_by=account_id)
        )
        if (await conn.execute(claim)).rowcount != 1:
            return None
        code = (await conn.execute(select(rc.id, rc.package_id).where(rc.code_hash == digest))).one()
        grant = await insert_grant(conn, account_id, code.package_id, f"code:{code.id}", now)
        await conn.execute(update(redemption_codes).where(rc.id == code.id).values(grant_id=grant.id))
        await audit.record(
            conn,
            at_ms=now,
            actor=f"account:{account_id}",
            action="code.redeemed",
            target=f"code:{code.id}",
            detail={
                "grant_id": grant.id,
                "package_id": code.package_id,
                "credits": int(grant.credits),
                "address": bucket,
            },
        )
        return grant


async def _why_not(conn: AsyncConnection, digest: str, now: int) -> Exception:
    """Why a code could not be claimed: unknown or expired (404), or redeemed already (409)."""
    row = (
        await conn.execute(select(rc.redeemed_at_ms, rc.expires_at_ms).where(rc.code_hash == digest))
    ).first()
    if row is None:
        return NotFound("no such redemption code", code="code_not_found", param="code")
    if row.redeemed_at_ms is not None:
        return Conflict("this code has been redeemed already", code="code_redeemed", param="code")
    return NotFound("this redemption code has expired", code="code_expired", param="code")
