"""Alerts on SQLite and PostgreSQL with a real Redis: low balance once per level, expiry notices
once per grant, signed delivery to a real receiver, retries by the schedule (time driven by
the injectable clock), giving up, at least once with concurrent or dying deliverers, and the
address checks that keep a customer's URL out of the operator's network."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import ip_address
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from sqlalchemy import select, update

from billing.alert_delivery import LEASE_MS, Deliverer, retry_delay_ms
from billing.alert_settings import write_settings
from billing.alert_urls import GuardedResolver, RefusedAddress, check_url, is_public
from billing.alerts import NEVER_MS, raise_alerts
from billing.db.schema import account_alerts, alert_deliveries
from billing.packages import NewPackage
from billing.service import Billing
from gateway.quota.store import QuotaStore

from .alert_receiver import Receiver, verify
from .helpers import DAY_MS, ManualClock, Pack, funded, new_id, redis_now, request

pytestmark = pytest.mark.timeout(60)


async def configure(billing: Billing, account_id: str, **changes: Any) -> dict[str, Any]:
    settings = await write_settings(
        billing.engine, account_id, changes, rotate_secret=False, allow_private=True, now_ms=billing.clock()
    )
    return dict(settings)


async def rows(billing: Billing, account_id: str) -> list[Any]:
    async with billing.engine.connect() as conn:
        found = await conn.execute(
            select(alert_deliveries)
            .where(alert_deliveries.c.account_id == account_id)
            .order_by(alert_deliveries.c.created_at_ms, alert_deliveries.c.id)
        )
        return list(found)


async def one_row(billing: Billing, event_id: str) -> Any:
    async with billing.engine.connect() as conn:
        return (await conn.execute(select(alert_deliveries).where(alert_deliveries.c.id == event_id))).one()


async def alert_pass(billing: Billing, clock: ManualClock) -> list[str]:
    return await raise_alerts(billing.engine, billing.store, clock)


def deliverer(billing: Billing, clock: ManualClock, **options: Any) -> Deliverer:
    return Deliverer(billing.engine, clock=clock, allow_private=True, timeout_s=5, **options)


async def spend(redis: Redis, who: Any, credits: int) -> None:
    """One request costing (and reserving) ``credits``: prompt tokens at 1, one output token at 2."""
    await request(QuotaStore(redis), who, prompt=credits - 2, completion=1, max_tokens=1)


async def buy(billing: Billing, account_id: str, credits: int) -> None:
    package, _ = await billing.packages.create_package(
        NewPackage(name="top-up", credits=credits, valid_days=30)
    )
    await billing.packages.purchase(account_id, package["id"], new_id("order"))


async def test_a_low_balance_alerts_once_per_level(
    billing: Billing, redis: Redis, clock: ManualClock
) -> None:
    who = await funded(billing, [Pack(1000)])
    await configure(billing, who.account_id, low_balance=400)  # no url: recorded, not sent
    await alert_pass(billing, clock)
    assert await rows(billing, who.account_id) == []  # 1000 left

    await spend(redis, who, 700)
    first = await alert_pass(billing, clock)
    assert len(first) == 1 and first[0].startswith("evt_")
    assert await alert_pass(billing, clock) == []  # still low: once per level
    await spend(redis, who, 100)
    assert await alert_pass(billing, clock) == []  # lower still, same level

    clock.set(clock.now + 60_000)
    await buy(billing, who.account_id, 1000)  # 1200 left: above the threshold
    assert await alert_pass(billing, clock) == []
    await spend(redis, who, 900)  # 300 left of 2000 purchased: a new level, a new drop
    second = await alert_pass(billing, clock)
    assert len(second) == 1 and await alert_pass(billing, clock) == []

    found = await rows(billing, who.account_id)
    assert [r.id for r in found] == first + second
    payloads = [orjson.loads(r.payload) for r in found]
    assert [p["data"] for p in payloads] == [
        {"threshold": 400, "remaining": 300, "available": 300, "reserved": 0, "purchased": 1000},
        {"threshold": 400, "remaining": 300, "available": 300, "reserved": 0, "purchased": 2000},
    ]
    assert all(
        p["type"] == "balance.low" and p["account_id"] == who.account_id and p["id"] == r.id
        for p, r in zip(payloads, found, strict=True)
    )
    # without a receiver URL: recorded for the metrics and the record, never due for sending
    assert all(r.next_attempt_ms == NEVER_MS and r.attempts == 0 and r.delivered_at_ms is None for r in found)


async def test_an_expiring_grant_is_noticed_once(billing: Billing, redis: Redis, clock: ManualClock) -> None:
    now = await redis_now(redis)
    soon = await funded(billing, [Pack(500, days=30)], valid_from=now - 25 * DAY_MS)  # 5 days left
    who = soon.account_id
    package, _ = await billing.packages.create_package(NewPackage(name="later", credits=300, valid_days=30))
    later, _ = await billing.packages.purchase(who, package["id"], new_id("order"))  # 30 days left
    await configure(billing, who, expiry_days=7)

    raised = await alert_pass(billing, clock)
    assert len(raised) == 1
    assert await alert_pass(billing, clock) == []
    (row,) = await rows(billing, who)
    event = orjson.loads(row.payload)
    grant = soon.grants[0]
    assert event["type"] == "grant.expiring" and event["id"] == raised[0] and row.kind == "grant.expiring"
    assert event["data"] == {
        "grant_id": grant["id"],
        "package_id": grant["package_id"],
        "remaining": 500,
        "credits": 500,
        "valid_until": grant["valid_until"],
        "expiry_days": 7,
    }
    await configure(billing, who, expiry_days=30)  # now the later grant is within the window too
    assert len(await alert_pass(billing, clock)) == 1
    assert {orjson.loads(r.payload)["data"]["grant_id"] for r in await rows(billing, who)} == {
        grant["id"],
        later["id"],
    }


async def test_a_used_up_or_expired_grant_gets_no_notice(
    billing: Billing, redis: Redis, clock: ManualClock
) -> None:
    now = await redis_now(redis)
    gone = await funded(billing, [Pack(100, days=30)], valid_from=now - 31 * DAY_MS)  # expired a day ago
    await configure(billing, gone.account_id, expiry_days=365)
    used = await funded(billing, [Pack(100, days=30)], valid_from=now - 25 * DAY_MS)
    await spend(redis, used, 100)
    await configure(billing, used.account_id, expiry_days=365)
    await alert_pass(billing, clock)
    assert await rows(billing, gone.account_id) == [] and await rows(billing, used.account_id) == []


async def test_delivery_is_signed_and_verifiable(billing: Billing, redis: Redis, clock: ManualClock) -> None:
    with Receiver() as receiver:
        who = await funded(billing, [Pack(100)])
        settings = await configure(billing, who.account_id, url=receiver.url, low_balance=100)
        secret = settings["secret"]
        (event_id,) = await alert_pass(billing, clock)
        await deliverer(billing, clock).deliver_due()

        (got,) = receiver.of(event_id)
        row = await one_row(billing, event_id)
        assert got.body == row.payload.encode() and orjson.loads(got.body)["id"] == event_id
        assert got.headers["content-type"] == "application/json"
        assert got.headers["tokengate-event-type"] == "balance.low"
        signature = got.headers["tokengate-signature"]
        assert signature.startswith(f"t={clock.now // 1000},v1=")
        assert verify(got.body, signature, secret, clock.now / 1000)
        assert not verify(got.body, signature, secret + "x", clock.now / 1000)
        assert not verify(got.body + b" ", signature, secret, clock.now / 1000)
        assert not verify(got.body, signature, secret, clock.now / 1000 + 301)  # replayed too late
        assert row.delivered_at_ms == clock.now and row.attempts == 1 and row.last_error is None

        await deliverer(billing, clock).deliver_due()  # delivered: never again
        assert len(receiver.of(event_id)) == 1


async def test_a_failing_receiver_gets_the_alert_later(billing: Billing, clock: ManualClock) -> None:
    with Receiver(statuses=[500, 503, 302]) as receiver:  # a redirect is a failure, not followed
        who = await funded(billing, [Pack(100)])
        secret = (await configure(billing, who.account_id, url=receiver.url, low_balance=100))["secret"]
        (event_id,) = await alert_pass(billing, clock)
        sender = deliverer(billing, clock)
        start = clock.now
        for attempt, wait_ms in enumerate([30_000, 60_000, 120_000], start=1):
            await sender.deliver_due()
            assert len(receiver.of(event_id)) == attempt
            row = await one_row(billing, event_id)
            assert row.attempts == attempt and row.delivered_at_ms is None
            assert row.next_attempt_ms == clock.now + wait_ms
            clock.set(clock.now + wait_ms - 1)
            await sender.deliver_due()  # not yet due
            assert len(receiver.of(event_id)) == attempt
            clock.set(clock.now + 1)
        assert (await one_row(billing, event_id)).last_error == "HTTP 302"
        await sender.deliver_due()
        got = receiver.of(event_id)
        assert [g.path for g in got] == [receiver.path] * 4  # never /elsewhere
        assert len({g.body for g in got}) == 1  # the same event every time
        stamps = [g.headers["tokengate-signature"].split(",")[0] for g in got]
        assert stamps == [
            f"t={(start + ms) // 1000}" for ms in (0, 30_000, 90_000, 210_000)
        ]  # signed when sent
        assert verify(got[3].body, got[3].headers["tokengate-signature"], secret, clock.now / 1000)
        row = await one_row(billing, event_id)
        assert row.delivered_at_ms == clock.now and row.attempts == 4


async def test_it_gives_up_after_a_day_of_attempts(billing: Billing, clock: ManualClock) -> None:
    with Receiver(statuses=[500] * 100) as receiver:
        who = await funded(billing, [Pack(100)])
        await configure(billing, who.account_id, url=receiver.url, low_balance=100)
        (event_id,) = await alert_pass(billing, clock)
        created, sender, waits = clock.now, deliverer(billing, clock), []
        while True:
            await sender.deliver_due()
            row = await one_row(billing, event_id)
            if row.next_attempt_ms == NEVER_MS:
                break
            waits.append(row.next_attempt_ms - clock.now)
            clock.set(row.next_attempt_ms)
        assert waits[:8] == [30_000, 60_000, 120_000, 240_000, 480_000, 960_000, 1_920_000, 3_600_000]
        assert set(waits[7:]) == {3_600_000}
        assert clock.now <= created + DAY_MS < clock.now + retry_delay_ms(row.attempts)
        assert row.attempts == len(waits) + 1 == len(receiver.of(event_id)) == 30  # the last at 23 h 3 min
        assert row.delivered_at_ms is None and row.last_error == "HTTP 500"
        clock.set(clock.now + 10 * DAY_MS)
        await sender.deliver_due()  # given up: never again
        assert len(receiver.of(event_id)) == 30


async def test_two_deliverers_at_once_deliver_every_alert_once(billing: Billing, clock: ManualClock) -> None:
    with Receiver() as receiver:
        events = []
        for _ in range(12):
            who = await funded(billing, [Pack(10)])
            await configure(billing, who.account_id, url=receiver.url, low_balance=10)
            events += await alert_pass(billing, clock)
        assert len(set(events)) == 12
        await asyncio.gather(deliverer(billing, clock).deliver_due(), deliverer(billing, clock).deliver_due())
        for event_id in events:
            got = receiver.of(event_id)
            assert len(got) == 1  # the claims are exclusive: one sender per attempt
            assert orjson.loads(got[0].body)["id"] == event_id
            row = await one_row(billing, event_id)
            assert row.delivered_at_ms is not None and row.attempts == 1


async def test_a_deliverer_that_dies_mid_send_loses_nothing(billing: Billing, clock: ManualClock) -> None:
    with Receiver(hold_first_s=3) as receiver:  # takes the event, answers too late for the dead sender
        who = await funded(billing, [Pack(10)])
        await configure(billing, who.account_id, url=receiver.url, low_balance=10)
        (event_id,) = await alert_pass(billing, clock)
        dying = asyncio.create_task(deliverer(billing, clock).deliver_due())
        for _ in range(200):
            if receiver.of(event_id):
                break
            await asyncio.sleep(0.02)
        dying.cancel()  # killed after the receiver got the event, before it learned the answer
        with pytest.raises(asyncio.CancelledError):
            await dying
        other = deliverer(billing, clock)
        await other.deliver_due()  # leased by the dead one: not yet
        assert (await one_row(billing, event_id)).delivered_at_ms is None
        clock.set(clock.now + LEASE_MS)
        await other.deliver_due()
        got = receiver.of(event_id)
        assert len(got) == 2 and got[0].body == got[1].body  # at least once: a duplicate, same id
        row = await one_row(billing, event_id)
        assert row.delivered_at_ms == clock.now and row.attempts == 2


async def test_alerts_raised_by_concurrent_passes_are_raised_once(
    billing: Billing, redis: Redis, clock: ManualClock
) -> None:
    who = await funded(billing, [Pack(10)])
    await configure(billing, who.account_id, low_balance=10)
    raised = await asyncio.gather(*(alert_pass(billing, clock) for _ in range(4)))
    (row,) = await rows(billing, who.account_id)
    assert [event for found in raised for event in found].count(row.id) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9000/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1%25eth0]/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://2130706433/",  # 127.0.0.1 in decimal: getaddrinfo reads it so
        "http://127.1/",
        "http://localhost:8000/",
        "http://api.localhost/",
    ],
)
def test_private_receivers_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"not a public address|local name"):
        check_url(url, allow_private=False)
    assert check_url(url, allow_private=True) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "https://user:pw@example.com/",
        "https://@example.com/",
        "http:///nohost",
        "https://example.com:99999/",
        "https://example.com/a b",
        "https://example.com/" + "a" * 2100,
    ],
)
def test_malformed_receivers_are_refused_even_when_private_is_allowed(url: str) -> None:
    with pytest.raises(ValueError):
        check_url(url, allow_private=True)


def test_public_receivers_are_accepted() -> None:
    for url in (
        "https://hooks.example.com/tokengate",
        "http://93.184.216.34:8080/x",
        "https://[2606:4700::1]/",
    ):
        assert check_url(url, allow_private=False) == url


async def _stored_url_then_delivered(
    billing: Billing, clock: ManualClock, receiver: Receiver, url: str
) -> Any:
    """An alert for a URL stored as if accepted earlier (its name was public then), sent without
    TOKENGATE_ALERTS_ALLOW_PRIVATE; its row after the attempt."""
    who = await funded(billing, [Pack(10)])
    await configure(billing, who.account_id, url=receiver.url, low_balance=10)
    async with billing.engine.begin() as conn:
        await conn.execute(
            update(account_alerts).where(account_alerts.c.account_id == who.account_id).values(url=url)
        )
    (event_id,) = await alert_pass(billing, clock)
    await Deliverer(billing.engine, clock=clock, allow_private=False, timeout_s=5).deliver_due()
    assert receiver.of(event_id) == []
    return await one_row(billing, event_id)


async def test_a_private_or_local_host_is_refused_at_delivery(billing: Billing, clock: ManualClock) -> None:
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        for host, why in (("127.0.0.1", "not a public address"), ("localhost", "local name")):
            row = await _stored_url_then_delivered(
                billing, clock, receiver, f"http://{host}:{port}{receiver.path}"
            )
            assert row.delivered_at_ms is None and row.attempts == 1 and row.next_attempt_ms > clock.now
            assert row.last_error.startswith("url refused") and why in row.last_error


async def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(
    billing: Billing, clock: ManualClock
) -> None:
    """The name is checked where the connection resolves it (DNS may change after the URL was set)."""
    host = socket.gethostname()
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)}
    except OSError:
        pytest.skip(f"this machine's name {host!r} does not resolve")
    if any(is_public(ip_address(str(a).split("%")[0])) for a in found):
        pytest.skip(f"this machine's name {host!r} resolves to a public address")
    with Receiver() as receiver:
        url = f"http://{host}:{receiver.server.server_address[1]}{receiver.path}"
        check_url(url, allow_private=False)  # nothing in the URL itself says private
        row = await _stored_url_then_delivered(billing, clock, receiver, url)
        assert row.delivered_at_ms is None and row.attempts == 1
        assert "not a public address" in row.last_error


async def test_the_resolver_refuses_names_of_private_addresses() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(RefusedAddress, match="not a public address"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
