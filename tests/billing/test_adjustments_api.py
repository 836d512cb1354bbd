"""Adjustments through the admin API and the admin CLI, against real planes on each ledger
backend: 201 then 200 for the same key, 409 for the key with other content and for a debit
past the available balance (a reservation in flight is not available), nothing changed by a
refusal, the list, the audit lines, and the contract's refusals (404, 422, 401)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from gateway.quota.store import QuotaStore
from launcher.cli import main

from .helpers import new_id
from .procs import ADMIN_KEY, Gateway, start_gateway, start_sim, stop_process, write_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gateway(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from tests.redis_servers import redis_server

    tmp = tmp_path_factory.mktemp("adjustments")
    with redis_server() as server:
        sim, port = start_sim(tmp / "sim.log")
        gw = start_gateway(
            write_config(tmp / "models.yaml", port), server.url, ledger_url, tmp / "gateway.log"
        )
        try:
            yield gw
        finally:
            gw.stop()
            stop_process(sim)


def funded_account(gw: Gateway, credits: int) -> tuple[str, str]:
    """(account id, key id) of a new account that bought ``credits``, all through the admin API."""
    with gw.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "Adj"}).raise_for_status().json()["id"]
        package = admin.post("/admin/packages", json={"name": "P", "credits": credits, "valid_days": 30})
        admin.post(
            f"/admin/accounts/{account}/purchases",
            json={"package_id": package.raise_for_status().json()["id"], "order_id": new_id("o")},
        ).raise_for_status()
        key = admin.post(f"/admin/accounts/{account}/keys", json={"name": "k"}).raise_for_status().json()
    return account, key["id"]


async def _hold(redis_url: str, account: str, key_id: str, rid: str, settle: bool = False) -> int:
    """Admit a request straight on the gateway's Redis (held until ``settle``); its reserve."""
    redis = Redis.from_url(redis_url)
    try:
        store = QuotaStore(redis)
        if settle:
            await store.settle_event(
                request_id=rid,
                account_id=account,
                key_id=key_id,
                prompt_tokens=10,
                completion_tokens=1,
                status="ok",
                counted_by="upstream",
                stream=False,
                cluster="c",
                endpoint="e",
            )
            return 0
        adm = await store.admit(
            request_id=rid,
            account_id=account,
            key_id=key_id,
            model="m",
            prompt_tokens=10,
            max_tokens=400,
            max_tokens_ceiling=1000,
            input_pm=1000,
            output_pm=2000,
        )
        return adm.reserve
    finally:
        await redis.aclose()


def balance(gw: Gateway, account: str) -> dict[str, int]:
    with gw.admin() as admin:
        found: dict[str, int] = admin.get(f"/admin/accounts/{account}").raise_for_status().json()["balance"]
    return found


def test_adjustments_through_the_admin_api(gateway: Gateway) -> None:
    account, key_id = funded_account(gateway, 1000)
    url = f"/admin/accounts/{account}/adjustments"
    with gateway.admin() as admin:
        body = {"credits": 500, "reason": "goodwill", "idempotency_key": "k1"}
        made = admin.post(url, json=body)
        assert made.status_code == 201, made.text
        credit = made.json()
        assert set(credit) == {
            "id",
            "account_id",
            "credits",
            "reason",
            "idempotency_key",
            "status",
            "grant_id",
            "allocation",
            "created_at",
        }
        assert (credit["credits"], credit["status"], credit["allocation"]) == (500, "applied", None)
        again = admin.post(url, json=body)
        assert again.status_code == 200 and again.json() == credit
        other = admin.post(url, json={**body, "credits": 499})
        assert other.status_code == 409 and other.json()["error"]["type"] == "conflict_error"
        assert balance(gateway, account)["available"] == 1500

        held = asyncio.run(_hold(gateway.redis_url, account, key_id, "hold-" + account))
        assert held == 810
        before = balance(gateway, account)
        assert before == {"purchased": 1500, "available": 690, "reserved": 810, "spent": 0, "expired": 0}
        refused = admin.post(url, json={"credits": -691, "reason": "chargeback", "idempotency_key": "k2"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "insufficient_balance"
        assert balance(gateway, account) == before  # nothing changed
        again = admin.post(url, json={"credits": -691, "reason": "chargeback", "idempotency_key": "k2"})
        assert again.status_code == 409 and balance(gateway, account) == before

        debit = admin.post(url, json={"credits": -690, "reason": "chargeback", "idempotency_key": "k3"})
        assert debit.status_code == 201, debit.text
        assert (
            debit.json()["status"] == "applied"
            and sum(p["credits"] for p in debit.json()["allocation"]) == 690
        )
        assert balance(gateway, account) == {
            "purchased": 810,
            "available": 0,
            "reserved": 810,
            "spent": 0,
            "expired": 0,
        }
        asyncio.run(_hold(gateway.redis_url, account, key_id, "hold-" + account, settle=True))
        assert balance(gateway, account) == {
            "purchased": 810,
            "available": 798,
            "reserved": 0,
            "spent": 12,
            "expired": 0,
        }

        listed = admin.get(url).raise_for_status().json()
        assert [(a["idempotency_key"], a["status"]) for a in listed["data"]] == [
            ("k3", "applied"),
            ("k2", "refused"),
            ("k1", "applied"),
        ]
        assert listed["next_cursor"] is None
        page = admin.get(url, params={"limit": 2}).raise_for_status().json()
        rest = admin.get(url, params={"limit": 2, "cursor": page["next_cursor"]}).raise_for_status().json()
        assert [a["id"] for a in page["data"] + rest["data"]] == [a["id"] for a in listed["data"]]
        audit = admin.get("/admin/audit", params={"target": f"account:{account}"}).raise_for_status().json()
        actions = [line["action"] for line in audit["data"] if line["action"].startswith("adjustment.")]
        assert sorted(actions) == ["adjustment.applied", "adjustment.applied", "adjustment.refused"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"credits": 5, "reason": "r", "idempotency_key": "k", "actor": "me"}, 422, "actor"),
        ({"credits": 0, "reason": "r", "idempotency_key": "k"}, 400, "credits"),
        ({"credits": "5", "reason": "r", "idempotency_key": "k"}, 422, "credits"),
        ({"credits": 5, "reason": "", "idempotency_key": "k"}, 422, "reason"),
        ({"credits": 5, "reason": "r" * 501, "idempotency_key": "k"}, 422, "reason"),
        ({"credits": 5, "reason": "r"}, 422, "idempotency_key"),
        ({"credits": 5, "reason": "r", "idempotency_key": "k" * 201}, 422, "idempotency_key"),
    ],
)
def test_bad_adjustments_are_refused(gateway: Gateway, body: dict[str, Any], status: int, param: str) -> None:
    account, _ = funded_account(gateway, 10)
    with gateway.admin() as admin:
        answer = admin.post(f"/admin/accounts/{account}/adjustments", json=body)
        assert answer.status_code == status and answer.json()["error"]["param"] == param
        assert admin.get(f"/admin/accounts/{account}/adjustments").json()["data"] == []


def test_unknown_accounts_and_no_credential(gateway: Gateway) -> None:
    body = {"credits": 5, "reason": "r", "idempotency_key": "k"}
    with gateway.admin() as admin:
        assert admin.post("/admin/accounts/acct-nobody/adjustments", json=body).status_code == 404
        assert admin.get("/admin/accounts/acct-nobody/adjustments").status_code == 404
    account, _ = funded_account(gateway, 10)
    for headers in ({}, {"Authorization": "Bearer not-the-admin-key"}):
        with httpx.Client(base_url=gateway.control, headers=headers, timeout=10) as anyone:
            assert anyone.post(f"/admin/accounts/{account}/adjustments", json=body).status_code == 401
    assert balance(gateway, account)["purchased"] == 10


def test_the_cli_adjusts_once_per_key(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENGATE_CONTROL_URL", gateway.control)
    monkeypatch.setenv("TOKENGATE_ADMIN_KEY", ADMIN_KEY)

    def tg(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    account, _ = funded_account(gateway, 100)
    status, out, err = tg(
        "accounts", "adjust", account, "--credits", "250", "--reason", "cli", "--key", "c1", "--json"
    )
    assert status == 0 and err == "", err
    first = json.loads(out)
    status, out, _ = tg(
        "accounts", "adjust", account, "--credits", "250", "--reason", "cli", "--key", "c1", "--json"
    )
    assert status == 0 and json.loads(out) == first
    status, out, err = tg("accounts", "adjust", account, "--credits=-351", "--reason", "too much")
    assert status == 1 and out == "" and "(409)" in err and "Traceback" not in err
    status, out, _ = tg("accounts", "adjust", account, "--credits", "-50", "--reason", "some")
    assert status == 0 and "applied" in out and "--key cli-" in out
    status, out, _ = tg("accounts", "adjustments", account)
    assert status == 0 and out.split()[:3] == ["ID", "CREDITS", "STATUS"] and first["id"] in out
    assert balance(gateway, account)["available"] == 300
    with pytest.raises(SystemExit):
        tg("accounts", "adjust", account, "--credits", "0", "--reason", "nothing")
