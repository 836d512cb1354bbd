"""Delivering alerts: signed POSTs from the ``alert_deliveries`` outbox, at least once.

Each attempt POSTs the row's payload (fixed when the alert was raised) to the account's URL
as it is now, signed with its secret as it is now and the current time, like Stripe's
webhooks (receivers can reuse their code)::

    Tokengate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>

A 2xx within ``TIMEOUT_S`` delivers it; anything else (another status, a redirect, which is
never followed, a timeout, a refused address) is retried after 30 s, doubling up to an hour,
until an attempt would come more than 24 h after the alert was raised: then it is given up.

Several processes may deliver at once. A row is claimed before it is sent by a conditional
UPDATE that moves its ``next_attempt_ms`` forward by a lease (and counts the attempt): only
one claimer matches the value it read. A process that dies mid-send leaves the row due
again when the lease ends, so an event may arrive twice (same event id), never not at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.alert_urls import GuardedResolver, check_url
from billing.alerts import NEVER_MS
from billing.clock import Clock, wall_ms
from billing.db.engine import transaction
from billing.db.schema import account_alerts, alert_deliveries

log = logging.getLogger("tokengate.billing.alerts")

TIMEOUT_S = 10.0
LEASE_MS = 60_000  # well past TIMEOUT_S: a live sender finishes long before another may claim
FIRST_RETRY_MS = 30_000
MAX_RETRY_MS = 3_600_000
GIVE_UP_MS = 24 * 3_600_000
USER_AGENT = "tokengate-alerts/1"

Outcome = Literal["delivered", "retrying", "given_up", "unsent", "lost"]


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The ``Tokengate-Signature`` header of ``body`` at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def retry_delay_ms(attempts: int) -> int:
    """The wait after the ``attempts``-th failed attempt: 30 s, 60 s, 120 s, ... at most 1 h."""
    doublings: int = min(max(attempts - 1, 0), 20)
    return min(FIRST_RETRY_MS << doublings, MAX_RETRY_MS)


def next_attempt_ms(created_ms: int, attempts: int, now_ms: int) -> int:
    """When to try again after ``attempts`` failed attempts; NEVER_MS past the 24 h window."""
    at = now_ms + retry_delay_ms(attempts)
    return NEVER_MS if at > created_ms + GIVE_UP_MS else at


@dataclass(frozen=True)
class Due:
    id: str
    kind: str
    payload: str
    attempts: int
    next_attempt_ms: int
    created_at_ms: int
    url: str | None
    secret: str | None


@dataclass
class DeliveryReport:
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def __getitem__(self, outcome: Outcome) -> int:
        return self.counts.get(outcome, 0)


class Deliverer:
    """Sends the alerts that are due, any number of these at once (in one or many processes)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock = wall_ms,
        allow_private: bool = False,
        timeout_s: float = TIMEOUT_S,
        concurrency: int = 8,
        batch: int = 100,
        max_per_pass: int = 10_000,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.allow_private = allow_private
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.batch = batch
        self.max_per_pass = max_per_pass

    async def deliver_due(self) -> DeliveryReport:
        """Attempt every alert due now (each at most once in this pass)."""
        report, seen = DeliveryReport(), 0
        async with self._session() as session:
            limit = asyncio.Semaphore(self.concurrency)
            while seen < self.max_per_pass:
                due = await self._due(self.clock())
                if not due:
                    break
                seen += len(due)
                outcomes = await asyncio.gather(
                    *(self._one(session, d, limit) for d in due), return_exceptions=True
                )
                for outcome in outcomes:  # each one finished: none left running on a closed session
                    if isinstance(outcome, BaseException):
                        raise outcome  # the database failed: claimed rows come back when their lease ends
                    report.add(outcome)
        return report

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[aiohttp.ClientSession]:
        resolver = None if self.allow_private else GuardedResolver()
        connector = aiohttp.TCPConnector(limit=self.concurrency, resolver=resolver)
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),  # one receiver's cookies never reach another
            trust_env=False,  # no proxy from the environment: the address checked is the one used
        ) as session:
            yield session

    async def _due(self, now_ms: int) -> list[Due]:
        d, a = alert_deliveries.c, account_alerts.c
        query = (
            select(d.id, d.kind, d.payload, d.attempts, d.next_attempt_ms, d.created_at_ms, a.url, a.secret)
            .select_from(alert_deliveries.outerjoin(account_alerts, a.account_id == d.account_id))
            .where(d.delivered_at_ms.is_(None), d.next_attempt_ms <= now_ms)
            .order_by(d.next_attempt_ms)
            .limit(self.batch)
        )
        async with transaction(self.engine) as conn:
            return [Due(*row) for row in await conn.execute(query)]

    async def _one(self, session: aiohttp.ClientSession, due: Due, limit: asyncio.Semaphore) -> Outcome:
        async with limit:
            if due.url is None or due.secret is None:  # the receiver was removed since
                await self._set(
                    due, due.next_attempt_ms, next_attempt_ms=NEVER_MS, last_error="no receiver url"
                )
                return "unsent"
            lease = self.clock() + LEASE_MS
            if not await self._set(
                due, due.next_attempt_ms, next_attempt_ms=lease, attempts=alert_deliveries.c.attempts + 1
            ):
                return "lost"  # another deliverer claimed it first
            error = await self._send(session, due, due.url, due.secret)
            now = self.clock()
            if error is None:
                await self._set(due, None, delivered_at_ms=now)
                return "delivered"
            retry = next_attempt_ms(due.created_at_ms, due.attempts + 1, now)
            await self._set(due, lease, next_attempt_ms=retry, last_error=error[:500])
            log.warning(
                "alert %s: attempt %d failed (%s); %s",
                due.id,
                due.attempts + 1,
                error,
                "given up" if retry == NEVER_MS else f"next in {(retry - now) // 1000} s",
            )
            return "given_up" if retry == NEVER_MS else "retrying"

    async def _set(self, due: Due, expected_next: int | None, **values: Any) -> bool:
        """Update the row if it is undelivered and (unless None) still due at ``expected_next``."""
        c = alert_deliveries.c
        where = [c.id == due.id, c.delivered_at_ms.is_(None)]
        if expected_next is not None:
            where.append(c.next_attempt_ms == expected_next)
        async with transaction(self.engine) as conn:
            result = await conn.execute(update(alert_deliveries).where(*where).values(**values))
        return bool(result.rowcount)

    async def _send(self, session: aiohttp.ClientSession, due: Due, url: str, secret: str) -> str | None:
        """One signed POST; None if the receiver took it (2xx), else what went wrong."""
        try:
            check_url(url, allow_private=self.allow_private)
        except ValueError as error:
            return f"url refused: {error}"
        body = due.payload.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Tokengate-Event-Id": due.id,
            "Tokengate-Event-Type": due.kind,
            "Tokengate-Signature": sign(body, secret, self.clock() // 1000),
        }
        try:
            async with session.post(url, data=body, headers=headers, allow_redirects=False) as answer:
                return None if 200 <= answer.status < 300 else f"HTTP {answer.status}"
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            return f"{error.__class__.__name__}: {error}".rstrip(": ")
