"""Buying a package as a customer does, through both planes: the price list, an order, its
payment (the test provider's Pay page; Stripe's signed webhook from a local stand-in of
Stripe's API), the credits, and what the operator sees (orders, the audit log)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Gateway, Sims
from tests.support.stripe_standin import StripeStandIn, deliver, start_stripe_standin

from .conftest import start_gateway, write_config

pytestmark = pytest.mark.timeout(120)
WEBHOOK_SECRET = "whsec_test_" + "s3cret" * 4
PRICE = {"amount": 4900, "currency": "CNY"}


@pytest.fixture(scope="module")
def stripe_standin() -> Iterator[StripeStandIn]:
    standin = start_stripe_standin()
    yield standin
    standin.stop()


def _shop(sims: Sims, redis_url: str, tmp: Path, **env: str) -> Gateway:
    gateway = start_gateway(
        write_config(tmp / "models.yaml", sims),
        redis_url,
        tmp / "gateway.log",
        DATABASE_URL=f"sqlite:///{tmp / 'ledger.db'}",
        **env,
    )
    with gateway.admin() as admin:
        admin.post(
            "/admin/packages",
            json={
                "id": "starter",
                "name": "Starter",
                "credits": 5000,
                "valid_days": 30,
                "price": PRICE,
                "for_sale": True,
            },
        ).raise_for_status()
    return gateway


@pytest.fixture(scope="module")
def test_shop(sims: Sims, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = _shop(sims, redis_url, tmp_path_factory.mktemp("test-shop"), TOKENGATE_PAYMENT_PROVIDER="test")
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def stripe_shop(
    sims: Sims, redis_url: str, tmp_path_factory: pytest.TempPathFactory, stripe_standin: StripeStandIn
) -> Iterator[Gateway]:
    gateway = _shop(
        sims,
        redis_url,
        tmp_path_factory.mktemp("stripe-shop"),
        TOKENGATE_PAYMENT_PROVIDER="stripe",
        TOKENGATE_STRIPE_API_KEY="sk_test_standin",
        TOKENGATE_STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TOKENGATE_STRIPE_API_BASE=stripe_standin.url,
    )
    yield gateway
    gateway.stop()


def _order(shop: Gateway, key: str) -> dict[str, object]:
    with shop.client(key) as client:
        answer = client.post("/v1/me/orders", json={"package_id": "starter"})
    assert answer.status_code == 201, answer.text
    order: dict[str, object] = answer.json()
    assert {k: order[k] for k in ("package_id", "status", "amount", "currency")} == {
        "package_id": "starter",
        "status": "pending",
        "amount": 4900,
        "currency": "CNY",
    }
    return order


def _available(shop: Gateway, key: str) -> int:
    with shop.client(key) as client:
        return int(client.get("/v1/me").raise_for_status().json()["balance"]["available"])


def test_a_customer_buys_with_the_test_provider_pay_page(test_shop: Gateway) -> None:
    account_id, key = test_shop.new_account(credits=0)
    offers = httpx.get(test_shop.v1 + "/packages").raise_for_status().json()["data"]  # no key needed
    assert {
        "id": "starter",
        "name": "Starter",
        "credits": 5000,
        "valid_days": 30,
        "models": None,
        "price": PRICE,
    } in offers
    order = _order(test_shop, key)
    url = str(order["checkout_url"])
    assert url == f"{test_shop.control}/pay/test/{order['id']}"
    page = httpx.get(url)
    assert page.status_code == 200 and "49.00 CNY" in page.text and ">Pay</button>" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    paid = httpx.post(url, follow_redirects=True)
    assert paid.status_code == 200 and re.search(r'id="status">paid<', paid.text), paid.text
    assert _available(test_shop, key) == 5000
    with test_shop.client(key) as client:
        mine = client.get("/v1/me/orders").raise_for_status().json()["data"]
        one = client.get(f"/v1/me/orders/{order['id']}").raise_for_status().json()
    assert [o["id"] for o in mine] == [order["id"]] and one["status"] == "paid" and one["grant_id"]
    assert httpx.post(url, follow_redirects=True).status_code == 200  # Pay again: nothing more
    assert _available(test_shop, key) == 5000
    with test_shop.admin() as admin:
        listed = admin.get("/admin/orders", params={"account_id": account_id, "status": "paid"}).json()[
            "data"
        ]
        audit = admin.get("/admin/audit", params={"target": f"order:{order['id']}"}).json()["data"]
    assert [o["id"] for o in listed] == [order["id"]]
    assert [(line["actor"], line["action"]) for line in audit] == [
        ("provider:test", "order.paid"),
        (f"account:{account_id}", "order.created"),
    ]


def test_orders_are_refused_clearly(test_shop: Gateway) -> None:
    _, key = test_shop.new_account(credits=0)
    _, other_key = test_shop.new_account(credits=0)
    order = _order(test_shop, other_key)
    with test_shop.client(key) as client:
        assert client.post("/v1/me/orders", json={"package_id": "nope"}).status_code == 404
        assert client.post("/v1/me/orders", json={"package_id": "starter", "extra": 1}).status_code == 422
        assert client.post(
            "/v1/me/orders", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code in (400, 422)
        assert client.get(f"/v1/me/orders/{order['id']}").status_code == 404  # another account's
    assert httpx.post(test_shop.v1 + "/me/orders", json={"package_id": "starter"}).status_code == 401
    assert httpx.get(f"{test_shop.control}/pay/test/ord_unknown").status_code == 404
    for path in ("/v1/me/orders", "/v1/me/redeem", "/pay/test/ord_x"):  # bounded before it is read
        too_big = httpx.post(test_shop.control + path, content=b"x" * 100_000, headers={"authorization": key})
        assert too_big.status_code == 413, (path, too_big.text)


def test_admin_writes_are_in_the_audit_log(test_shop: Gateway) -> None:
    with test_shop.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "audited"}).raise_for_status().json()
        refused = admin.post("/admin/accounts", json={"name": ""})
        lines = admin.get("/admin/audit", params={"action": "POST /admin/accounts", "limit": 2}).json()[
            "data"
        ]
    assert refused.status_code == 422
    assert [(line["detail"]["status"], line["detail"]["body"]) for line in lines] == [
        (422, {"name": ""}),
        (201, {"name": "audited"}),
    ]
    assert all(line["actor"] == "admin" for line in lines) and account["id"]
    assert httpx.get(test_shop.control + "/admin/audit").status_code == 401


def test_a_stripe_payment_delivered_many_ways_grants_once(
    stripe_shop: Gateway, stripe_standin: StripeStandIn
) -> None:
    _, key = stripe_shop.new_account(credits=0)
    order = _order(stripe_shop, key)
    session_id = next(
        s for s, v in stripe_standin.sessions.items() if v["client_reference_id"] == order["id"]
    )
    session = stripe_standin.sessions[session_id]
    assert order["checkout_url"] == session["url"]
    assert (session["amount_total"], session["currency"]) == (4900, "cny")
    call = next(c for c in stripe_standin.calls if c.params.get("client_reference_id") == order["id"])
    assert (
        call.idempotency_key == f"checkout:{order['id']}" and call.authorization == "Bearer sk_test_standin"
    )

    event = stripe_standin.completed_event(session_id)
    with ThreadPoolExecutor(10) as pool:  # the same delivery, ten times at once
        answers = list(pool.map(lambda _: deliver(stripe_shop.control, event, WEBHOOK_SECRET), range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert sorted(a.json()["outcome"] for a in answers) == ["already_paid"] * 9 + ["paid"]
    for _ in range(3):  # Stripe's retries of the same payment under new event ids, out of order
        again = {**event, "id": "evt_again_" + str(time.monotonic_ns())}
        assert deliver(stripe_shop.control, again, WEBHOOK_SECRET).json()["outcome"] == "already_paid"
    assert _available(stripe_shop, key) == 5000
    with stripe_shop.client(key) as client:
        assert client.get(f"/v1/me/orders/{order['id']}").json()["status"] == "paid"


def test_forged_old_or_wrong_stripe_deliveries_grant_nothing(
    stripe_shop: Gateway, stripe_standin: StripeStandIn
) -> None:
    _, key = stripe_shop.new_account(credits=0)
    order = _order(stripe_shop, key)
    session_id = next(
        s for s, v in stripe_standin.sessions.items() if v["client_reference_id"] == order["id"]
    )
    event = stripe_standin.completed_event(session_id)
    control = stripe_shop.control
    assert deliver(control, event, "whsec_another_secret").status_code == 400
    assert deliver(control, event, WEBHOOK_SECRET, timestamp=int(time.time()) - 301).status_code == 400
    assert deliver(control, event, WEBHOOK_SECRET, signature="t=1,v0=abc").status_code == 400
    assert deliver(control, event, WEBHOOK_SECRET, signature="garbage" * 1000).status_code == 400
    unsigned = httpx.post(control + "/webhooks/stripe", content=json.dumps(event))
    assert unsigned.status_code == 400 and unsigned.json()["error"]["code"] == "invalid_signature"
    wrong = [
        stripe_standin.completed_event(session_id, amount_total=1),
        stripe_standin.completed_event(session_id, currency="usd"),
        stripe_standin.completed_event(session_id, client_reference_id="ord_" + "f" * 24),
    ]
    assert [deliver(control, e, WEBHOOK_SECRET).json()["outcome"] for e in wrong] == [
        "mismatch",
        "mismatch",
        "unknown_order",
    ]
    unpaid = stripe_standin.completed_event(session_id, payment_status="unpaid")
    assert deliver(control, unpaid, WEBHOOK_SECRET).json()["outcome"] == "ignored"
    assert deliver(control, b"not json", WEBHOOK_SECRET).status_code == 400
    huge = httpx.post(control + "/webhooks/stripe", content=b"x" * (300 * 1024))
    assert huge.status_code == 413
    assert _available(stripe_shop, key) == 0
    with stripe_shop.client(key) as client:
        assert client.get(f"/v1/me/orders/{order['id']}").json()["status"] == "pending"
    with stripe_shop.admin() as admin:
        refused = admin.get(
            "/admin/audit", params={"target": f"order:{order['id']}", "action": "payment.refused"}
        ).json()["data"]
    assert [line["detail"]["reason"] for line in refused] == ["mismatch", "mismatch"]


def test_a_stripe_outage_at_checkout_is_a_503_and_grants_nothing(
    stripe_shop: Gateway, stripe_standin: StripeStandIn
) -> None:
    _, key = stripe_shop.new_account(credits=0)
    stripe_standin.fail_next = 10  # more than the client's retries
    try:
        with stripe_shop.client(key) as client:
            answer = client.post("/v1/me/orders", json={"package_id": "starter"})
    finally:
        stripe_standin.fail_next = 0
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "payment_provider_unavailable"
    assert answer.headers.get("retry-after")


def test_an_admin_refunds_a_stripe_order(stripe_shop: Gateway, stripe_standin: StripeStandIn) -> None:
    _, key = stripe_shop.new_account(credits=0)
    order = _order(stripe_shop, key)
    session_id = next(
        s for s, v in stripe_standin.sessions.items() if v["client_reference_id"] == order["id"]
    )
    event = stripe_standin.completed_event(session_id)
    assert deliver(stripe_shop.control, event, WEBHOOK_SECRET).json()["outcome"] == "paid"
    intent = event["data"]["object"]["payment_intent"]
    with stripe_shop.admin() as admin:
        assert admin.post(f"/admin/orders/{order['id']}/refund", json={}).status_code == 422  # a reason
        stripe_standin.fail_next = 10  # Stripe is down: the credits go, the order waits for a retry
        try:
            failed = admin.post(f"/admin/orders/{order['id']}/refund", json={"reason": "duplicate purchase"})
        finally:
            stripe_standin.fail_next = 0
        assert failed.status_code == 503 and _available(stripe_shop, key) == 0
        assert admin.get(f"/admin/orders/{order['id']}").json()["status"] == "paid"
        done = admin.post(f"/admin/orders/{order['id']}/refund", json={"reason": "duplicate purchase"})
        again = admin.post(f"/admin/orders/{order['id']}/refund", json={"reason": "duplicate purchase"})
    assert done.status_code == 200 and done.json()["status"] == "refunded" and again.json() == done.json()
    refunds = [
        c for c in stripe_standin.calls if c.path == "/v1/refunds" and c.params["payment_intent"] == intent
    ]
    assert {c.idempotency_key for c in refunds} == {f"refund:{order['id']}"}
    assert {c.params["amount"] for c in refunds} == {"4900"}
    with stripe_shop.client(key) as client:
        me = client.get("/v1/me").json()
    assert me["balance"]["purchased"] == me["balance"]["available"] == 0
    assert deliver(stripe_shop.control, event, WEBHOOK_SECRET).json()["outcome"] == "refunded"  # a late copy
    assert _available(stripe_shop, key) == 0
