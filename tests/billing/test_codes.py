"""Redemption codes in the service, on each ledger backend with a real Redis: minting stores
hashes only, a code grants once (also under 50 concurrent redemptions), unknown, expired and
used codes are refused and counted, and past the limit every attempt is refused first."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text

from billing.clock import DAY_MS
from billing.code_attempts import FAILURE_LIMIT, FailureLimiter, account_key, address_key
from billing.code_format import canonical, code_hash
from billing.codes import CodeService
from billing.db.schema import ADJUSTMENT_PACKAGE, audit_log, grants, ledger_entries, redemption_codes
from billing.errors import Conflict
from billing.packages import NewPackage
from billing.reconcile import Reconciler
from billing.service import Billing
from gateway.errors import BadRequest, NotFound, RateLimited

from .helpers import ManualClock, conserved, funded, ledger_figures

pytestmark = pytest.mark.timeout(120)


def service(billing: Billing, redis: Redis, **limits: int) -> CodeService:
    return CodeService(billing.engine, billing.packages, FailureLimiter(redis, **limits), billing.clock)


def address() -> str:
    """A client address bucket of the test's own, so counters never carry over between tests."""
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}-{secrets.token_hex(3)}"


async def package(billing: Billing, credits: int = 1000, days: int = 30) -> str:
    made, _ = await billing.packages.create_package(NewPackage(name="gift", credits=credits, valid_days=days))
    return made["id"]


async def rows(billing: Billing, *where: Any) -> list[Any]:
    async with billing.engine.connect() as conn:
        return list(await conn.execute(select(redemption_codes).where(*where)))


async def test_minting_keeps_only_hashes_and_lists_no_secret(billing: Billing, redis: Redis) -> None:
    codes = service(billing, redis)
    pid = await package(billing)
    batch = await codes.mint(pid, 5, valid_days=7)
    assert set(batch) == {"data", "batch_id"} and len(batch["data"]) == 5
    issued = [c["code"] for c in batch["data"]]
    assert len(set(issued)) == 5
    assert all(
        set(c) == {"code", "package_id", "expires_at"} and c["package_id"] == pid for c in batch["data"]
    )
    assert batch["data"][0]["expires_at"] is not None
    stored = await rows(billing, redemption_codes.c.batch_id == batch["batch_id"])
    assert sorted(r.code_hash for r in stored) == sorted(code_hash(canonical(c) or "") for c in issued)
    # no column of any row holds a code, in any spelling
    async with billing.engine.connect() as conn:
        dump = " ".join(str(v) for r in await conn.execute(select(redemption_codes)) for v in r)
    for code in issued:
        assert code not in dump and (canonical(code) or "") not in dump
    page = await codes.list_codes(batch_id=batch["batch_id"])
    assert len(page["data"]) == 5 and page["next_cursor"] is None
    listed = " ".join(str(v) for c in page["data"] for v in c.values())
    assert all(c["status"] == "unused" and "code" not in c and "code_hash" not in c for c in page["data"])
    assert not any(r.code_hash in listed for r in stored)
    assert not any((canonical(code) or "") in listed for code in issued)
    async with billing.engine.connect() as conn:
        line = (
            await conn.execute(select(audit_log).where(audit_log.c.target == f"batch:{batch['batch_id']}"))
        ).one()
    assert line.action == "code.minted" and line.detail["count"] == 5 and "code" not in line.detail


async def test_minting_is_validated(billing: Billing, redis: Redis) -> None:
    codes = service(billing, redis)
    pid = await package(billing)
    with pytest.raises(NotFound):
        await codes.mint("no-such-package", 1)
    with pytest.raises(BadRequest):
        await codes.mint(ADJUSTMENT_PACKAGE, 1)
    for count in (0, 10_001, -1):
        with pytest.raises(BadRequest):
            await codes.mint(pid, count)
    for days in (0, 36_501):
        with pytest.raises(BadRequest):
            await codes.mint(pid, 1, valid_days=days)
    assert await rows(billing, redemption_codes.c.package_id == pid) == []


async def test_a_code_grants_its_package_once(billing: Billing, redis: Redis) -> None:
    codes = service(billing, redis)
    pid = await package(billing, credits=750)
    code = (await codes.mint(pid, 1))["data"][0]["code"]
    who, other = await funded(billing, []), await funded(billing, [])
    grant = await codes.redeem(who.account_id, "  " + code.lower().replace("-", " "), address())
    assert grant["credits"] == grant["remaining"] == 750 and grant["package_id"] == pid
    (row,) = await rows(billing, redemption_codes.c.grant_id == grant["id"])
    assert grant["order_id"] == f"code:{row.id}" and row.redeemed_by == who.account_id
    bal = await billing.store.balance(who.account_id)
    assert bal["purchased"] == bal["available"] == 750 and conserved(bal)
    assert (await ledger_figures(billing, who.account_id))["purchased"] == 750
    for account in (who.account_id, other.account_id):  # the same account or another: used
        with pytest.raises(Conflict) as used:
            await codes.redeem(account, code, address())
        assert used.value.status == 409 and used.value.code == "code_redeemed"
    assert (await billing.store.balance(who.account_id))["purchased"] == 750
    assert (await billing.store.balance(other.account_id))["purchased"] == 0
    listed = (await codes.list_codes(package_id=pid))["data"]
    assert [(c["status"], c["redeemed_by"], c["grant_id"]) for c in listed] == [
        ("redeemed", who.account_id, grant["id"])
    ]
    async with billing.engine.connect() as conn:
        line = (await conn.execute(select(audit_log).where(audit_log.c.target == f"code:{row.id}"))).one()
        entries = (
            await conn.execute(
                select(func.count())
                .select_from(ledger_entries)
                .where(ledger_entries.c.id == f"purchase:code:{row.id}")
            )
        ).scalar()
    assert (line.actor, line.action, line.detail["grant_id"]) == (
        f"account:{who.account_id}",
        "code.redeemed",
        grant["id"],
    )
    assert entries == 1


async def test_unknown_malformed_and_expired_codes_are_not_found(
    billing: Billing, redis: Redis, clock: ManualClock
) -> None:
    codes = service(billing, redis)
    pid = await package(billing)
    code = (await codes.mint(pid, 1, valid_days=2))["data"][0]["code"]
    who = await funded(billing, [])
    for typed in ("TG-00000-00000-00000-00000", "hello", code[:-1]):
        with pytest.raises(NotFound) as unknown:
            await codes.redeem(who.account_id, typed, address())
        assert unknown.value.code == "code_not_found"
    clock.set(clock.now + 2 * DAY_MS)  # expired at that very instant
    with pytest.raises(NotFound) as expired:
        await codes.redeem(who.account_id, code, address())
    assert expired.value.code == "code_expired"
    assert [c["status"] for c in (await codes.list_codes(package_id=pid))["data"]] == ["expired"]
    assert [c["id"] for c in (await codes.list_codes(package_id=pid, status="expired"))["data"]] != []
    assert (await codes.list_codes(package_id=pid, status="unused"))["data"] == []
    assert (await billing.store.balance(who.account_id))["purchased"] == 0


async def test_failures_are_limited_per_account_and_per_address(billing: Billing, redis: Redis) -> None:
    codes = service(billing, redis)
    pid = await package(billing, credits=10)
    good = [c["code"] for c in (await codes.mint(pid, 3))["data"]]
    who, where = await funded(billing, []), address()
    for _ in range(FAILURE_LIMIT):
        with pytest.raises(NotFound):
            await codes.redeem(who.account_id, "TG-00000-00000-00000-00000", where)
    with pytest.raises(RateLimited) as limited:  # a valid code too, before any lookup
        await codes.redeem(who.account_id, good[0], address())
    retry = int(limited.value.headers["Retry-After"])
    assert limited.value.status == 429 and 0 < retry <= 15 * 60
    assert (
        await rows(
            billing, redemption_codes.c.redeemed_at_ms.is_not(None), redemption_codes.c.package_id == pid
        )
    ) == []
    # the same address, another account: the address is over its limit too
    other = await funded(billing, [])
    with pytest.raises(RateLimited):
        await codes.redeem(other.account_id, good[0], where)
    # another account from another address: served; successes are not counted
    await codes.redeem(other.account_id, good[0], address())
    await codes.redeem(other.account_id, good[1], address())
    assert int(await redis.get(account_key(other.account_id)) or 0) == 0
    assert int(await redis.get(account_key(who.account_id)) or 0) == FAILURE_LIMIT
    assert 0 < await redis.pttl(address_key(where)) <= 15 * 60 * 1000
    # refusals are not failures: the window does not move
    for _ in range(3):
        with pytest.raises(RateLimited):
            await codes.redeem(who.account_id, good[2], address())
    assert int(await redis.get(account_key(who.account_id)) or 0) == FAILURE_LIMIT


async def test_the_limit_ends_with_its_window(billing: Billing, redis: Redis) -> None:
    codes = service(billing, redis, limit=2, window_ms=300)
    pid = await package(billing, credits=10)
    good = (await codes.mint(pid, 1))["data"][0]["code"]
    who, where = await funded(billing, []), address()
    for _ in range(2):
        with pytest.raises(NotFound):
            await codes.redeem(who.account_id, "nope", where)
    with pytest.raises(RateLimited):
        await codes.redeem(who.account_id, good, where)
    await asyncio.sleep(0.4)
    assert (await codes.redeem(who.account_id, good, where))["credits"] == 10


async def test_50_concurrent_redemptions_of_one_code_grant_once(billing: Billing, redis: Redis) -> None:
    codes = service(billing, redis)
    pid = await package(billing, credits=4321)
    code = (await codes.mint(pid, 1))["data"][0]["code"]
    accounts = [await funded(billing, []) for _ in range(5)]
    where = [address() for _ in range(5)]

    async def attempt(i: int) -> Any:
        try:
            return await codes.redeem(accounts[i % 5].account_id, code, where[i % 5])
        except (Conflict, RateLimited) as refused:
            return refused.status

    results = await asyncio.gather(*(attempt(i) for i in range(50)))
    won = [r for r in results if isinstance(r, dict)]
    assert len(won) == 1 and all(r in (409, 429) for r in results if not isinstance(r, dict))
    winner = won[0]["account_id"]
    async with billing.engine.connect() as conn:
        (row,) = list(
            await conn.execute(select(redemption_codes).where(redemption_codes.c.package_id == pid))
        )
        n = (
            await conn.execute(select(func.count()).select_from(grants).where(grants.c.package_id == pid))
        ).scalar()
    assert n == 1 and row.grant_id == won[0]["id"] and row.redeemed_by == winner
    for who in accounts:
        expected = 4321 if who.account_id == winner else 0
        assert (await billing.store.balance(who.account_id))["purchased"] == expected
        assert (await ledger_figures(billing, who.account_id))["purchased"] == expected


async def test_a_crash_after_the_commit_is_repaired_by_reconcile(
    billing: Billing, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    codes = service(billing, redis)
    pid = await package(billing, credits=600)
    code = (await codes.mint(pid, 1))["data"][0]["code"]
    who = await funded(billing, [])

    async def dies(grant: Any) -> bool:  # the process dies between the commit and Redis
        return False

    monkeypatch.setattr(billing.packages, "apply", dies)
    grant = await codes.redeem(who.account_id, code, address())
    monkeypatch.undo()
    assert (await billing.store.balance(who.account_id))["purchased"] == 0
    await Reconciler(billing.store, billing.engine, grace_s=0).run(apply=True, account_ids=[who.account_id])
    await Reconciler(billing.store, billing.engine, grace_s=0).run(apply=True, account_ids=[who.account_id])
    assert (await billing.store.balance(who.account_id))["purchased"] == grant["credits"] == 600
    with pytest.raises(Conflict):
        await codes.redeem(who.account_id, code, address())


async def test_a_failed_grant_leaves_the_code_unused(billing: Billing, redis: Redis) -> None:
    """The claim and the grant are one transaction: a grant that cannot be written (here the
    ledger refuses a second entry of the same id) unclaims the code."""
    codes = service(billing, redis)
    pid = await package(billing, credits=5)
    code = (await codes.mint(pid, 1))["data"][0]["code"]
    (row,) = await rows(billing, redemption_codes.c.package_id == pid)
    who = await funded(billing, [])
    await billing.packages.purchase(who.account_id, pid, f"code:{row.id}")  # the order id, taken
    with pytest.raises(Exception) as failed:
        await codes.redeem(who.account_id, code, address())
    assert not isinstance(failed.value, (Conflict, NotFound))
    (after,) = await rows(billing, redemption_codes.c.id == row.id)
    assert (after.redeemed_at_ms, after.redeemed_by, after.grant_id) == (None, None, None)
    async with billing.engine.connect() as conn:
        assert (
            await conn.execute(
                text("SELECT count(*) FROM grants WHERE order_id = :o"), {"o": f"code:{row.id}"}
            )
        ).scalar() == 1
