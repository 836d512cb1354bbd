"""The alert routes through the control plane's real application (admin door, key auth, error
shapes) in process, on SQLite and PostgreSQL: validation, the secret shown once, the
customer's own account only, the address policy, and /admin/metrics behind the admin key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis.asyncio import Redis

from billing.alert_delivery import Deliverer
from billing.alerts import raise_alerts
from billing.audit import audit_page
from billing.service import Billing
from control.app import ControlApp
from gateway.contract import Settings, open_key_authenticator
from tests.redis_servers import RedisServer

from .alert_receiver import Receiver
from .helpers import ManualClock, Pack, funded

pytestmark = pytest.mark.timeout(60)
ADMIN = "admin-alerts-test-key"


@asynccontextmanager
async def control(
    billing: Billing, redis: Redis, server: RedisServer, ledger_url: str, *, allow_private: bool
) -> AsyncIterator[httpx.AsyncClient]:
    """The control plane's app on the test's billing, without its lifespan (state set here)."""
    settings = Settings(
        redis_url=server.url,
        database_url=ledger_url,
        admin_key=SecretStr(ADMIN),
        alerts_allow_private=allow_private,
    )
    app = ControlApp(settings)
    authenticator, close = open_key_authenticator(settings)
    state = app.api.state
    state.settings, state.redis, state.authenticator, state.billing = settings, redis, authenticator, billing
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://control"
        ) as client:
            yield client
    finally:
        await close()


@pytest.fixture
async def api(
    billing: Billing, redis: Redis, redis_server: RedisServer, ledger_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    async with control(billing, redis, redis_server, ledger_url, allow_private=True) as client:
        yield client


@pytest.fixture
async def strict_api(
    billing: Billing, redis: Redis, redis_server: RedisServer, ledger_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    async with control(billing, redis, redis_server, ledger_url, allow_private=False) as client:
        yield client


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def key(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_settings_are_validated_and_the_secret_is_shown_once(
    api: httpx.AsyncClient, billing: Billing
) -> None:
    who = await funded(billing, [Pack(100)])
    path = f"/admin/accounts/{who.account_id}/alerts"
    empty = await api.get(path, headers=admin())
    nothing = {"url": None, "low_balance": None, "expiry_days": None, "updated_at": None}
    assert empty.status_code == 200 and empty.json() == {"account_id": who.account_id, **nothing}

    made = await api.put(
        path, headers=admin(), json={"url": "https://hooks.example.com/a", "low_balance": 50}
    )
    assert made.status_code == 200
    first = made.json()
    assert first["secret"].startswith("tga_") and len(first["secret"]) >= 40
    assert (first["url"], first["low_balance"], first["expiry_days"]) == (
        "https://hooks.example.com/a",
        50,
        None,
    )
    shown = (await api.get(path, headers=admin())).json()
    assert "secret" not in shown and shown == {k: v for k, v in first.items() if k != "secret"}

    moved = (
        await api.put(path, headers=admin(), json={"url": "https://hooks.example.com/b", "expiry_days": 7})
    ).json()
    kept = (moved["url"], moved["low_balance"], moved["expiry_days"])
    assert "secret" not in moved and kept == (
        "https://hooks.example.com/b",
        50,
        7,
    )  # absent: kept, the secret too
    rotated = (await api.put(path, headers=admin(), json={"rotate_secret": True})).json()
    assert rotated["secret"].startswith("tga_") and rotated["secret"] != first["secret"]
    cleared = (await api.put(path, headers=admin(), json={"url": None, "low_balance": None})).json()
    assert "secret" not in cleared and (cleared["url"], cleared["low_balance"], cleared["expiry_days"]) == (
        None,
        None,
        7,
    )
    refused = await api.put(path, headers=admin(), json={"rotate_secret": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "rotate_secret"
    again = (await api.put(path, headers=admin(), json={"url": "https://hooks.example.com/c"})).json()
    assert again["secret"] not in (first["secret"], rotated["secret"])  # a new URL after none: a new secret

    for body, param in (
        ({"url": "https://x.example", "colour": "red"}, "colour"),
        ({"low_balance": "5"}, "low_balance"),  # strict: no coercion
        ({"low_balance": -1}, "low_balance"),
        ({"expiry_days": 0}, "expiry_days"),
        ({"expiry_days": 366}, "expiry_days"),
        ({"rotate_secret": "yes"}, "rotate_secret"),
        ({"url": ""}, "url"),
    ):
        answer = await api.put(path, headers=admin(), json=body)
        assert answer.status_code == 422 and answer.json()["error"]["param"] == param, body
    for url in ("ftp://x.example/", "https://user:pw@x.example/", "https://x.example/" + "a" * 2100):
        answer = await api.put(path, headers=admin(), json={"url": url})
        assert answer.status_code in (400, 422) and answer.json()["error"]["param"] == "url", url
    assert (await api.get(path, headers=admin())).json()["url"] == "https://hooks.example.com/c"  # unchanged

    assert (await api.get("/admin/accounts/acct_nope/alerts", headers=admin())).status_code == 404
    assert (await api.put("/admin/accounts/acct_nope/alerts", headers=admin(), json={})).status_code == 404
    for method in ("GET", "PUT"):
        assert (await api.request(method, path, json={})).status_code == 401
        assert (await api.request(method, path, json={}, headers=key(who.secret))).status_code == 401


async def test_private_receivers_are_refused_unless_allowed(
    strict_api: httpx.AsyncClient, billing: Billing
) -> None:
    who = await funded(billing, [Pack(100)])
    path = f"/admin/accounts/{who.account_id}/alerts"
    for url in (
        "http://127.0.0.1:9000/x",
        "http://169.254.169.254/latest",
        "http://[::1]/",
        "http://localhost/",
    ):
        answer = await strict_api.put(path, headers=admin(), json={"url": url})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_url", url
    assert (await strict_api.get(path, headers=admin())).json()["url"] is None
    ok = await strict_api.put(path, headers=admin(), json={"url": "https://hooks.example.com/x"})
    assert ok.status_code == 200


def test_the_environment_allows_private_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().alerts_allow_private is False and Settings().alert_interval_s == 60
    monkeypatch.setenv("TOKENGATE_ALERTS_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("TOKENGATE_ALERT_INTERVAL", "5")
    assert Settings().alerts_allow_private is True and Settings().alert_interval_s == 5


async def test_a_customer_sets_its_own_alerts(api: httpx.AsyncClient, billing: Billing) -> None:
    who, other = await funded(billing, [Pack(100)]), await funded(billing, [Pack(100)])
    made = await api.put(
        "/v1/me/alerts", headers=key(who.secret), json={"url": "https://h.example/x", "low_balance": 10}
    )
    assert made.status_code == 200 and made.json()["account_id"] == who.account_id
    secret = made.json()["secret"]
    mine = (await api.get("/v1/me/alerts", headers=key(who.secret))).json()
    assert "secret" not in mine and (mine["url"], mine["low_balance"]) == ("https://h.example/x", 10)
    assert (await api.get(f"/admin/accounts/{who.account_id}/alerts", headers=admin())).json() == mine
    assert (await api.get("/v1/me/alerts", headers=key(other.secret))).json()["url"] is None  # its own only
    assert (await api.put("/v1/me/alerts", json={"low_balance": 1})).status_code == 401
    assert (
        await api.put("/v1/me/alerts", headers=key("tg-nope"), json={"low_balance": 1})
    ).status_code == 401
    assert (
        await api.put("/v1/me/alerts", headers=key(who.secret), json={"account_id": "x"})
    ).status_code == 422

    (line,) = (await audit_page(billing.engine, target=f"account:{who.account_id}", action="alerts.update"))[
        "data"
    ]
    assert line["actor"] == f"account:{who.account_id}" and line["detail"]["secret"] == "generated"
    assert secret not in str(line)  # never the secret


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


async def test_metrics_count_alerts_by_kind_and_state(
    api: httpx.AsyncClient, billing: Billing, clock: ManualClock
) -> None:
    assert (await api.get("/admin/metrics")).status_code == 401
    before = await api.get("/admin/metrics", headers=admin())
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    with Receiver(statuses=[500]) as failing, Receiver() as working:
        quiet = await funded(billing, [Pack(10)])  # no receiver: unsent
        await api.put(f"/admin/accounts/{quiet.account_id}/alerts", headers=admin(), json={"low_balance": 10})
        for receiver in (failing, working):
            who = await funded(billing, [Pack(10)])
            body = {"url": receiver.url, "low_balance": 10}
            assert (
                await api.put(f"/admin/accounts/{who.account_id}/alerts", headers=admin(), json=body)
            ).status_code == 200
        assert len(await raise_alerts(billing.engine, billing.store, clock)) >= 3
        await Deliverer(billing.engine, clock=clock, allow_private=True, timeout_s=5).deliver_due()
        clock.set(clock.now + 5_000)
        after = (await api.get("/admin/metrics", headers=admin())).text

    def grew(state: str) -> float:
        name, labels = "tokengate_alerts", {"kind": "balance.low", "state": state}
        return metric(after, name, **labels) - metric(before.text, name, **labels)

    assert grew("unsent") >= 1 and grew("delivered") >= 1 and grew("pending") >= 1
    assert (
        metric(after, "tokengate_alerts", kind="grant.expiring", state="failed") >= 0
    )  # every series present
    assert metric(after, "tokengate_alerts_oldest_pending_seconds") >= 5  # the failing one, raised 5 s ago
    assert metric(after, "tokengate_alert_accounts_low_balance") >= 3
    assert metric(after, "tokengate_alert_accounts", receiver="url") >= 2
    assert metric(after, "tokengate_alert_accounts", receiver="none") >= 1
