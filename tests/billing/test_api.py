"""The admin and self-service routes of DESIGN.md through a real gateway (and worker), on
each ledger backend: the contract, packages and purchases, balances with their grants,
usage pages and the CSV export, and tenant isolation."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .procs import ADMIN_KEY, Gateway, start_gateway, start_sim, start_worker, stop_process, write_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gateway(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from tests.redis_servers import redis_server

    tmp = tmp_path_factory.mktemp("api")
    with redis_server() as server:
        sim, port = start_sim(tmp / "sim.log")
        gw = start_gateway(
            write_config(tmp / "models.yaml", port), server.url, ledger_url, tmp / "gateway.log"
        )
        worker = start_worker(server.url, ledger_url, tmp / "worker.log")
        try:
            yield gw
        finally:
            stop_process(worker)
            gw.stop()
            stop_process(sim)


def customer(gw: Gateway, credits: int = 100_000, models: list[str] | None = None) -> dict[str, Any]:
    """A new account, a package it bought, and a key: everything through the admin API."""
    with gw.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "Team A"})
        assert account.status_code == 201
        acct = account.json()
        package = admin.post(
            "/admin/packages", json={"name": "S", "credits": credits, "valid_days": 30, "models": models}
        )
        assert package.status_code == 201
        grant = admin.post(
            f"/admin/accounts/{acct['id']}/purchases",
            json={"package_id": package.json()["id"], "order_id": "o-" + acct["id"]},
        )
        assert grant.status_code == 201
        key = admin.post(f"/admin/accounts/{acct['id']}/keys", json={"name": "ci"})
        assert key.status_code == 201
    return {"account": acct, "package": package.json(), "grant": grant.json(), "key": key.json()}


def wait_usage(gw: Gateway, key: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        with gw.client(key) as client:
            data: list[dict[str, Any]] = client.get("/v1/me/usage", params={"limit": 1000}).json()["data"]
        if len(data) >= count or time.monotonic() > deadline:
            return data
        time.sleep(0.1)


def test_accounts_keys_and_their_contract(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        made = admin.post("/admin/accounts", json={"name": "Acme"})
        assert made.status_code == 201 and set(made.json()) == {"id", "name", "created_at"}
        account = made.json()["id"]
        refused = admin.post("/admin/accounts", json={"name": "x", "plan": "gold"})
        assert refused.status_code == 422  # in OpenAI's error shape, naming the field
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "plan"
        unknown_route = admin.get("/admin/nothing-here")
        assert unknown_route.status_code == 404
        assert "Unknown route" in unknown_route.json()["error"]["message"]
        assert admin.get("/admin/accounts/acct_nope").status_code == 404
        assert admin.post("/admin/accounts/acct_nope/keys", json={"name": "k"}).status_code == 404
        key = admin.post(
            f"/admin/accounts/{account}/keys", json={"name": "k", "models": ["chat-model"], "rpm": 100}
        ).json()
        assert key["key"].startswith("tg-") and key["key"].startswith(key["prefix"])
        changed = admin.patch(f"/admin/keys/{key['id']}", json={"tpm": 5000, "disabled": False})
        assert changed.status_code == 200 and "key" not in changed.json()
        assert (changed.json()["tpm"], changed.json()["rpm"]) == (5000, 100)
        assert admin.patch("/admin/keys/key_nope", json={"rpm": 1}).status_code == 404
        assert admin.patch(f"/admin/keys/{key['id']}", json={"rpm": "5"}).status_code == 422  # no coercion
        view = admin.get(f"/admin/accounts/{account}").json()
        assert (
            view["balance"] == {"purchased": 0, "reserved": 0, "spent": 0, "expired": 0, "available": 0}
            and view["grants"] == []
        )
        assert admin.delete(f"/admin/keys/{key['id']}").status_code == 204
        assert admin.delete("/admin/keys/key_nope").status_code == 404
    assert gateway.chat(key["key"]).status_code == 401  # revoked: at once
    with httpx.Client(base_url=gateway.control) as anonymous:
        assert anonymous.post("/admin/accounts", json={"name": "x"}).status_code == 401
        basic = {"Authorization": f"Basic {ADMIN_KEY}"}  # the admin key, but not as a bearer token
        assert anonymous.post("/admin/accounts", json={"name": "x"}, headers=basic).status_code == 401


def test_a_disabled_key_lists_no_models(gateway: Gateway) -> None:
    c = customer(gateway)
    with gateway.client(c["key"]["key"]) as client:
        assert client.get("/v1/models").status_code == 200
        with gateway.admin() as admin:
            admin.patch(f"/admin/keys/{c['key']['id']}", json={"disabled": True}).raise_for_status()
        refused = client.get("/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_packages_and_purchases(gateway: Gateway) -> None:
    c = customer(gateway, credits=5000)
    account, package = c["account"]["id"], c["package"]
    with gateway.admin() as admin:
        assert package["id"] in {p["id"] for p in admin.get("/admin/packages").json()["data"]}
        pid = "pro-" + account[-6:]
        body = {"id": pid, "name": "Pro", "credits": 10, "valid_days": 1, "list_price": 900}
        assert admin.post("/admin/packages", json=body).status_code == 201
        assert admin.post("/admin/packages", json=body).status_code == 200
        assert admin.post("/admin/packages", json={**body, "credits": 11}).status_code == 409
        assert admin.post("/admin/packages", json={**body, "credits": 0}).status_code == 422
        order = {"package_id": pid, "order_id": "order-" + account}
        first = admin.post(f"/admin/accounts/{account}/purchases", json=order)
        again = admin.post(f"/admin/accounts/{account}/purchases", json=order)
        assert (first.status_code, again.status_code) == (201, 200)
        assert again.json() == first.json() and first.json()["list_price"] == 900
        other = {**order, "package_id": package["id"]}
        assert admin.post(f"/admin/accounts/{account}/purchases", json=other).status_code == 409
        assert (
            admin.post(
                f"/admin/accounts/{account}/purchases", json={**order, "order_id": "x", "package_id": "nope"}
            ).status_code
            == 404
        )
        view = admin.get(f"/admin/accounts/{account}").json()
    assert view["balance"]["purchased"] == 5010
    assert sorted(g["credits"] for g in view["grants"]) == [10, 5000]
    assert [g["package_id"] for g in view["grants"]] == [pid, package["id"]]  # expiring first


def test_me_shows_the_balance_and_grants_conserved(gateway: Gateway) -> None:
    c = customer(gateway, credits=10_000)
    key = c["key"]["key"]
    for _ in range(3):
        assert gateway.chat(key).status_code == 200
    with gateway.client(key) as client:
        me = client.get("/v1/me").json()
    assert me["account"] == {"id": c["account"]["id"], "name": "Team A"}
    assert me["key"]["prefix"] == c["key"]["prefix"] and "key" not in me["key"]
    bal = me["balance"]
    assert bal["purchased"] == 10_000 and bal["spent"] > 0
    assert bal["purchased"] == bal["available"] + bal["reserved"] + bal["spent"] + bal["expired"]
    [grant] = me["grants"]
    assert {"id", "package_id", "credits", "remaining", "valid_from", "valid_until"} <= set(grant)
    assert grant["id"] == c["grant"]["id"] and grant["remaining"] == 10_000 - bal["spent"]


def test_usage_pages_groups_and_export(gateway: Gateway) -> None:
    c = customer(gateway)
    key, account = c["key"]["key"], c["account"]["id"]
    ids = [gateway.chat(key).headers["x-request-id"] for _ in range(5)]
    records = wait_usage(gateway, key, 5)
    assert [r["request_id"] for r in records] == ids[::-1]  # newest first
    with gateway.admin() as admin:
        seen, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = admin.get(f"/admin/accounts/{account}/usage", params=params).json()
            seen += [r["request_id"] for r in page["data"]]
            cursor = page.get("next_cursor")
            if not cursor:
                break
        assert seen == ids[::-1]
        grouped = admin.get(f"/admin/accounts/{account}/usage", params={"group_by": "day,model,key"}).json()[
            "data"
        ]
        [row] = grouped
        assert row["model"] == "chat-model" and row["key"] == c["key"]["id"] and row["requests"] == 5
        assert row["charge"] == sum(r["charge"] for r in records)
        future = admin.get(f"/admin/accounts/{account}/usage", params={"from": "2999-01-01"})
        assert future.json()["data"] == []
        assert admin.get(f"/admin/accounts/{account}/usage", params={"group_by": "week"}).status_code == 400
        twice = admin.get(f"/admin/accounts/{account}/usage", params={"group_by": "model,model"})
        assert twice.status_code == 200 and twice.json()["data"][0]["requests"] == 5
        export = admin.get("/admin/usage/export", params={"format": "csv", "account_id": account})
    assert export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["request_id"] for r in rows] == ids[::-1]
    assert {r["account_id"] for r in rows} == {account} and int(rows[0]["charge"]) == records[0]["charge"]
    assert {r["stream"] for r in rows} == {"false"}  # as the JSON says it, not Python's False


def test_a_key_sees_its_own_account_only(gateway: Gateway) -> None:
    a, b = customer(gateway), customer(gateway)
    for who in (a, b):
        assert gateway.chat(who["key"]["key"]).status_code == 200
    a_key, b_account = a["key"]["key"], b["account"]["id"]
    wait_usage(gateway, a_key, 1)
    with gateway.client(a_key) as client:
        assert client.get("/v1/me").json()["account"]["id"] == a["account"]["id"]
        for params in ({}, {"account_id": b_account}, {"group_by": "key"}):
            data = client.get("/v1/me/usage", params=params).json()["data"]
            assert data and all(
                r.get("account_id", a["account"]["id"]) == a["account"]["id"]
                and r.get("key", a["key"]["id"]) == a["key"]["id"]
                for r in data
            )
    with httpx.Client(base_url=gateway.control, headers={"Authorization": f"Bearer {a_key}"}) as client:
        for path in (  # an API key is not the admin key
            f"/admin/accounts/{b_account}",
            f"/admin/accounts/{b_account}/usage",
            "/admin/usage/export",
            "/admin/packages",
        ):
            assert client.get(path).status_code == 401
    with httpx.Client(base_url=gateway.base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
        assert admin.get("/v1/me").status_code == 401  # the admin key is not an API key
    with httpx.Client(base_url=gateway.base) as anonymous:
        assert anonymous.get("/v1/me/usage").status_code == 401


def test_the_admin_view_falls_back_to_the_ledger(gateway: Gateway) -> None:
    """With its balance gone from Redis, the admin still sees the ledger's figures; the key
    is refused (fail closed) until reconcile."""
    import redis as sync_redis

    from gateway import keyspace

    c = customer(gateway, credits=777)
    account = c["account"]["id"]
    with sync_redis.Redis.from_url(gateway.redis_url) as client:
        client.delete(keyspace.balance_key(account))
    assert gateway.chat(c["key"]["key"]).status_code == 503
    with gateway.admin() as admin:
        view = admin.get(f"/admin/accounts/{account}").json()
    assert view["balance_source"] == "ledger" and view["balance"]["available"] == 777
    with gateway.client(c["key"]["key"]) as client:
        assert client.get("/v1/me").status_code == 503


def test_packages_on_sale_make_the_public_price_list(gateway: Gateway) -> None:
    """A priced package on sale is in ``GET /v1/packages`` at the public URL, no key needed;
    one not on sale is not; on sale without a price is refused; one trial package at most."""
    tag = str(time.time_ns())
    with gateway.admin() as admin:
        cheap = {"id": f"cheap-{tag}", "name": "Cheap", "credits": 1000, "valid_days": 30,
                 "price": {"amount": 900, "currency": "cny"}, "for_sale": True}
        made = admin.post("/admin/packages", json=cheap)
        assert made.status_code == 201, made.text
        assert made.json()["price"] == {"amount": 900, "currency": "CNY"} and made.json()["for_sale"] is True
        assert admin.post("/admin/packages", json=cheap).status_code == 200  # the same again
        priced = {**cheap, "price": {"amount": 901, "currency": "CNY"}}
        assert admin.post("/admin/packages", json=priced).status_code == 409
        hidden = {**cheap, "id": f"hidden-{tag}", "for_sale": False}
        assert admin.post("/admin/packages", json=hidden).status_code == 201
        unpriced = admin.post("/admin/packages", json={**cheap, "id": f"free-{tag}", "price": None})
        assert unpriced.status_code == 400 and unpriced.json()["error"]["param"] == "price"
        for price in ({"amount": -1, "currency": "CNY"}, {"amount": 1, "currency": "RMB1"},
                      {"amount": "9", "currency": "CNY"}):
            assert admin.post("/admin/packages", json={**cheap, "price": price}).status_code == 422
        existing = [p for p in admin.get("/admin/packages").json()["data"] if p["trial"]]
        trial = {"id": f"trial-{tag}", "name": "Trial", "credits": 500, "valid_days": 7, "trial": True}
        if existing:  # one trial package per ledger: another test may have made it
            trial = {k: existing[0][k] for k in ("id", "name", "credits", "valid_days", "trial")}
        else:
            assert admin.post("/admin/packages", json=trial).status_code == 201
        assert admin.post("/admin/packages", json=trial).status_code == 200
        second = admin.post("/admin/packages", json={**trial, "id": f"trial2-{tag}"})
        assert second.status_code == 409 and "trial" in second.json()["error"]["message"]
    listed = httpx.get(gateway.base + "/v1/packages", timeout=10)  # no key
    assert listed.status_code == 200
    offers = {p["id"]: p for p in listed.json()["data"]}
    assert offers[cheap["id"]] == {"id": cheap["id"], "name": "Cheap", "credits": 1000, "valid_days": 30,
                                   "models": None, "price": {"amount": 900, "currency": "CNY"}}
    assert hidden["id"] not in offers and trial["id"] not in offers
    amounts = [p["price"]["amount"] for p in listed.json()["data"]]
    assert amounts == sorted(amounts)
    assert httpx.get(gateway.control + "/v1/packages", timeout=10).json() == listed.json()


def test_an_admin_changes_how_a_package_is_sold(gateway: Gateway) -> None:
    """PATCH changes the name, price, sale, list price and weight; what a grant carries cannot
    be changed (422 naming the field); null where a value is needed is a 400."""
    tag = str(time.time_ns())
    package = {"id": f"sold-{tag}", "name": "Sold", "credits": 1000, "valid_days": 30,
               "price": {"amount": 900, "currency": "CNY"}, "for_sale": True}
    with gateway.admin() as admin:
        assert admin.post("/admin/packages", json=package).status_code == 201
        url = f"/admin/packages/{package['id']}"
        off = admin.patch(url, json={"for_sale": False, "price": None})
        assert off.status_code == 200, off.text
        assert off.json()["for_sale"] is False and off.json()["price"] is None
        assert package["id"] not in {p["id"] for p in httpx.get(gateway.base + "/v1/packages").json()["data"]}
        refused = admin.patch(url, json={"for_sale": True})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "price"
        back = admin.patch(url, json={"for_sale": True, "price": {"amount": 1900, "currency": "usd"},
                                      "name": "Sold again", "weight": 2})
        assert back.status_code == 200, back.text
        assert back.json()["price"] == {"amount": 1900, "currency": "USD"} and back.json()["weight"] == 2
        for fixed in ({"credits": 5}, {"valid_days": 1}, {"models": ["m"]}, {"trial": True}):
            answer = admin.patch(url, json=fixed)
            assert answer.status_code == 422 and answer.json()["error"]["param"] == next(iter(fixed))
        assert admin.patch(url, json={"weight": None}).status_code == 400
        assert admin.patch(url, json={"weight": 101}).status_code == 422
        assert admin.patch(f"/admin/packages/no-{tag}", json={"name": "x"}).status_code == 404
        stored = {p["id"]: p for p in admin.get("/admin/packages").json()["data"]}[package["id"]]
        assert stored["name"] == "Sold again" and stored["credits"] == 1000
        audit = admin.get("/admin/audit", params={"target": url}).json()["data"]
        assert {e["detail"]["status"] for e in audit} >= {200, 400, 422} and len(audit) >= 8
    offers = {p["id"]: p for p in httpx.get(gateway.base + "/v1/packages").json()["data"]}
    assert offers[package["id"]]["price"]["amount"] == 1900


def test_nul_characters_are_refused_before_the_ledger(gateway: Gateway) -> None:
    """PostgreSQL's text holds no NUL character: one in an id or a filter of the URL failed the
    ledger's statement, and so did one in a body's field (500s schemathesis found). In the
    path it names nothing (404), in the query it is a 400, in a body's field a 422 naming it,
    on every ledger alike."""
    ours = customer(gateway)
    with gateway.admin() as admin:
        for path in ("/admin/accounts/a%00b", "/admin/accounts/a%00b/usage", "/admin/orders/a%00b"):
            assert admin.get(path).status_code == 404, path
        assert admin.delete("/admin/keys/a%00b").status_code == 404
        for path in ("/admin/audit?action=a%00b", "/admin/orders?account_id=a%00b",
                     "/admin/usage/export?account_id=a%00b"):
            answer = admin.get(path)
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["error"]["code"] == "invalid_url"
        account = ours["account"]["id"]
        for path, body, field in (
            ("/admin/accounts", {"name": "a\x00b"}, "name"),
            (f"/admin/accounts/{account}/keys", {"name": "k", "models": ["chat\x00"]}, "models.0"),
            (f"/admin/accounts/{account}/adjustments",
             {"credits": 5, "reason": "r", "idempotency_key": "k\x00"}, "idempotency_key"),
        ):
            answer = admin.post(path, json=body)
            assert answer.status_code == 422, (path, answer.text)
            assert answer.json()["error"]["param"] == field
    assert httpx.get(gateway.control + "/pay/orders/a%00b", timeout=10).status_code == 404  # public
    with gateway.client(ours["key"]["key"]) as client:  # self-service, through the data plane
        assert client.get("/v1/me/orders/a%00b").status_code == 404
        assert client.get("/v1/me/usage?group_by=%00").status_code == 400
        assert client.post("/v1/me/orders", json={"package_id": "a\x00b"}).status_code == 422
