"""Reconcile: the ledger (truth) against Redis (the copy admission reads); report, rebuild.

For each shard, in one SQL snapshot: the grants of its accounts and what the ledger charged
to each, then the shard's usage stream (and dead letters) read AFTER the snapshot, and which
of its request ids the snapshot holds. What Redis should hold per grant is then

    spent    = ledger charges + charges of stream entries the snapshot does not hold
    reserved = the reservations in flight (read by the script itself)

and ``lua/rebuild_v2.lua`` compares and (``apply``) replaces the account's grants in ONE
atomic step, adding the entries settled after our stream read and the live reservations
itself. So work in progress is neither lost nor counted twice, and a rebuild can run while
traffic flows. A grant holds what the ledger says it holds (bought less withdrawn, until
its validity ends or it was closed); a withdrawal Redis made that the snapshot lacks
(billing/withdrawals.py posts it after Redis) is applied by the script too, never undone.
Before comparing, ``apply`` completes the withdrawals left half done by a crash: pending
debit adjustments and withdrawals Redis made that the ledger lacks (refunds). Trimming
never removes an entry a pass could miss if the pass takes less than ``trim.MARGIN_S``: a
slower pass starts again.

After Redis lost data, balances are missing and admission answers 503 (BalanceUnknown)
until the rebuild; keys are pushed after their balances, so a key never authenticates
against a missing balance. Before rebuilding lost balances, reconcile waits ``grace_s`` so
that gateways replay the usage events Redis lost (see gateway/quota/journal.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import exc, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing.accounts import limits_of
from billing.adjustments import AdjustmentService, op_id
from billing.clock import wall_ms
from billing.db.schema import accounts, api_keys, usage_records
from billing.key_caps import check_key_spend
from billing.ledger import LedgerGrant, LedgerRefused, ledger_grants, recorded_ids
from billing.streams import Entry, entries_of
from billing.tiers import refresh_tier
from billing.trim import MARGIN_S
from billing.withdrawals import posted_ids
from gateway.contract import (
    AccountRegistry,
    AccountStore,
    BalanceUnknown,
    dead_letter_key,
    grants_key,
    keyspace,
    new_epoch,
    parse_allocation,
    withdrawals_key,
)

log = logging.getLogger("tokengate.billing")


@dataclass
class Report:
    accounts: int = 0
    drift: dict[str, list[str]] = field(default_factory=dict)  # account -> differences
    keys: list[str] = field(default_factory=list)  # keys Redis could not authenticate
    ledger: list[str] = field(default_factory=list)  # the ledger disagreeing with itself
    pending: list[str] = field(default_factory=list)  # withdrawals half done (check) or not completed
    applied: bool = False

    def lines(self) -> list[str]:
        out = [f"account {a}: {d}" for a, diffs in sorted(self.drift.items()) for d in diffs]
        out += [f"key {k}: Redis disagrees" for k in self.keys]
        out += [f"LEDGER {problem}" for problem in self.ledger]
        out += [f"withdrawal {w}: not in the ledger yet" for w in self.pending]
        verb = "repaired" if self.applied else "found"
        out.append(
            f"{self.accounts} accounts; drift {verb} on {len(self.drift)}, "
            f"{len(self.keys)} keys; {len(self.ledger)} ledger problems"
        )
        return out


class Reconciler:
    def __init__(self, store: AccountStore, engine: AsyncEngine, *, grace_s: float = 10.0) -> None:
        self.store, self.engine, self.grace_s = store, engine, grace_s
        self.copies = AccountRegistry(store.client, store)
        self.adjustments = AdjustmentService(engine, store)

    async def run(self, *, apply: bool, account_ids: Sequence[str] | None = None) -> Report:
        report = Report(applied=apply)
        async with self.engine.connect() as conn:
            query = select(accounts.c.id)
            if account_ids is not None:
                query = query.where(accounts.c.id.in_(list(account_ids)))
            ids = sorted(row[0] for row in await conn.execute(query))
        report.accounts = len(ids)
        if apply and self.grace_s > 0 and await self._lost_balances(ids):
            log.warning("Redis lost balances: waiting %.0fs for gateways to replay", self.grace_s)
            await asyncio.sleep(self.grace_s)
        later = await self._complete_withdrawals(ids, apply, report)
        by_shard: dict[int, list[str]] = defaultdict(list)
        for account_id in ids:
            by_shard[keyspace.shard_of(account_id)].append(account_id)
        for shard, members in sorted(by_shard.items()):
            await self._shard(shard, members, apply, report)
        await self._keys(ids, apply, report)
        if later:  # their balances were missing: rebuilt now
            report.pending = []
            await self._complete_withdrawals(later, apply, report)
        if apply:  # the tiers fair shares read (lost with the rest when Redis lost its data)
            for account_id in ids:
                await refresh_tier(self.engine, self.store, account_id, wall_ms())
        return report

    async def _complete_withdrawals(self, ids: Sequence[str], apply: bool, report: Report) -> list[str]:
        """Pending debit adjustments and unposted withdrawals: completed (``apply``), else
        listed. The accounts whose balance Redis lacks, to complete after the rebuild."""
        later: set[str] = set()
        for row in await self.adjustments.pending(ids):
            if not apply:
                report.pending.append(op_id(row.id))
                continue
            try:
                await self.adjustments.complete(row)
            except BalanceUnknown:
                later.add(row.account_id)
                report.pending.append(op_id(row.id))
        for account_id in ids:
            for done in await self.adjustments.withdrawals.unposted(account_id):
                if done.op_id.startswith("adjustment:"):
                    continue  # its adjustment is pending: completed above
                if not apply:
                    report.pending.append(done.op_id)
                    continue
                try:
                    await self.adjustments.withdrawals.post(account_id, done)
                except (LedgerRefused, exc.IntegrityError) as error:
                    report.ledger.append(f"withdrawal {done.op_id} cannot be posted: {error}")
        return sorted(later)

    async def _lost_balances(self, ids: Sequence[str]) -> bool:
        for account_id in ids:
            if not await self.store.client.exists(keyspace.balance_key(account_id)):
                return True
        return False

    async def _shard(self, shard: int, members: list[str], apply: bool, report: Report) -> None:
        for _attempt in range(3):
            started = time.monotonic()
            found, pending, last_id, posted = await self._snapshot(shard, members, report)
            if time.monotonic() - started < MARGIN_S:
                break
            log.warning("reconcile: shard %d took too long to read; reading again", shard)
        else:
            raise RuntimeError(f"reconcile: shard {shard} cannot be read within {MARGIN_S}s")
        stream = keyspace.usage_stream_key(shard)
        for account_id in members:
            args: list[str | int] = []
            mine = [g for g in found if g.account_id == account_id]
            for g in mine:
                spent = g.spent + pending[account_id].get(g.id, 0)
                models = ",".join(g.models) if g.models is not None else ""
                args += [g.id, g.credits, spent, g.valid_until_ms, models]
            keys = [
                keyspace.balance_key(account_id),
                grants_key(account_id),
                keyspace.reservations_key(account_id),
                stream,
                withdrawals_key(account_id),
            ]
            held = sorted(posted[account_id])
            args += [len(held), *held]
            reply = await self.store.scripts.rebuild(
                keys=keys,
                args=["apply" if apply else "check", account_id, new_epoch(), last_id, len(mine), *args],
            )
            drift = [keyspace.reply_text(d) for d in reply[1:]]
            if drift:
                report.drift[account_id] = drift

    async def _snapshot(
        self, shard: int, members: list[str], report: Report
    ) -> tuple[list[LedgerGrant], dict[str, dict[str, int]], str, dict[str, set[str]]]:
        """Ledger grants + charges of stream entries the ledger lacks + which of the
        withdrawals Redis made the ledger holds, in one SQL snapshot."""
        async with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                found = await ledger_grants(conn, members)
                main = await self._read_stream(keyspace.usage_stream_key(shard))
                dead = await self._read_stream(dead_letter_key(shard))
                wanted = set(members)
                rids = {
                    e.fields.get("request_id", "")
                    for e in main + dead
                    if e.fields.get("account_id") in wanted
                }
                recorded = await recorded_ids(conn, rids)
                posted: dict[str, set[str]] = {}
                for account_id in members:  # read after the snapshot began, like the stream
                    done = await self.store.withdrawals(account_id)
                    posted[account_id] = await posted_ids(conn, account_id, done.values())
                await self._check_ledger(conn, members, found, report)
        pending: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        counted: set[str] = set()
        for entry in main + dead:
            rid, account = entry.fields.get("request_id", ""), entry.fields.get("account_id", "")
            if account not in wanted or rid in recorded or rid in counted:
                continue
            counted.add(rid)
            try:
                for grant_id, amount in parse_allocation(entry.fields.get("grants", "")):
                    pending[account][grant_id] += amount
            except ValueError:
                log.error("reconcile: entry %s has a malformed allocation", entry.id)
        return found, pending, main[-1].id if main else "", posted

    async def _read_stream(self, stream: str, chunk: int = 1000) -> list[Entry]:
        out: list[Entry] = []
        start = "-"
        while True:
            batch = entries_of(stream, await self.store.client.xrange(stream, start, "+", count=chunk))
            out += batch
            if len(batch) < chunk:
                return out
            start = "(" + batch[-1].id

    async def _check_ledger(
        self, conn: AsyncConnection, members: list[str], found: list[LedgerGrant], report: Report
    ) -> None:
        """grants.remaining and the usage records must agree with the ledger's legs."""
        for g in found:
            sold = g.credits if g.sold is None else g.sold
            if g.remaining != g.remaining_column or g.credits != g.remaining + g.spent or sold != g.credits:
                report.ledger.append(
                    f"grant {g.id}: credits {g.credits} (withdrawn {g.withdrawn}, sales legs {sold}), "
                    f"spent {g.spent}, legs left {g.remaining}, column {g.remaining_column}"
                )
        c = usage_records.c
        rows = await conn.execute(
            select(c.account_id, func.sum(c.charge)).where(c.account_id.in_(members)).group_by(c.account_id)
        )
        charged = {row[0]: int(row[1] or 0) for row in rows}
        spent: dict[str, int] = defaultdict(int)
        for g in found:
            spent[g.account_id] += g.spent
        for account_id in members:
            if charged.get(account_id, 0) != spent[account_id]:
                report.ledger.append(
                    f"account {account_id}: usage records charge "
                    f"{charged.get(account_id, 0)}, ledger {spent[account_id]}"
                )

    async def _keys(self, ids: list[str], apply: bool, report: Report) -> None:
        """Check every key's copy in Redis; ``apply``: push live keys, drop revoked ones."""
        async with self.engine.connect() as conn:
            rows = list(await conn.execute(select(api_keys).where(api_keys.c.account_id.in_(ids))))
        for row in rows:
            live, limits = row.revoked_at_ms is None, limits_of(row)
            expected = limits if live else None  # a live key's record must say what SQL says
            pushed = await self.copies.key_pushed(row.account_id, row.id, row.key_hash, expected)
            if live != pushed:
                report.keys.append(row.id if live else f"{row.id} (revoked)")
            if apply and live:
                await self.copies.push_key(row.account_id, row.id, row.key_hash, limits)
            elif apply:
                await self.copies.drop_key(row.account_id, row.id, row.key_hash)
            if live and limits.credit_limit is not None:  # its counter, from the ledger (key_caps.py)
                cap, account_id = limits.credit_limit, row.account_id
                spend = await check_key_spend(self.store, self.engine, account_id, row.id, cap, apply=apply)
                if spend.drift:
                    report.keys.append(spend.line())
