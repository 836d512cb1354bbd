"""Per-key credit caps end to end, on each ledger backend: the admin API's validation, the
cap on every key answer and in ``/v1/me`` with ``spent_in_period``, the admin CLI, and a
key capped per day refused with 402 ``key_credit_limit`` by the real gateway (official
``openai`` client, simulator upstream) having spent at most its cap in the ledger, while
another key of the same account goes on being served."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from launcher.cli import main

from .procs import (
    ADMIN_KEY,
    MODEL,
    Gateway,
    start_gateway,
    start_sim,
    start_worker,
    stop_process,
    write_config,
)

pytestmark = pytest.mark.timeout(180)
MESSAGES: Any = [{"role": "user", "content": "Count to ten, please."}]


@pytest.fixture(scope="module")
def gateway(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from tests.redis_servers import redis_server

    tmp = tmp_path_factory.mktemp("caps")
    with redis_server() as server:
        sim, port = start_sim(tmp / "sim.log")
        gw = start_gateway(write_config(tmp / "models.yaml", port), server.url, ledger_url, tmp / "gw.log")
        worker = start_worker(server.url, ledger_url, tmp / "worker.log")
        try:
            yield gw
        finally:
            stop_process(worker)
            gw.stop()
            stop_process(sim)


def funded_account(gw: Gateway, credits: int = 100_000) -> str:
    """A new account that bought a package of ``credits`` (through the admin API)."""
    with gw.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "Caps"}).raise_for_status().json()["id"]
        package = admin.post("/admin/packages", json={"name": "P", "credits": credits, "valid_days": 30})
        admin.post(
            f"/admin/accounts/{account}/purchases",
            json={"package_id": package.raise_for_status().json()["id"], "order_id": "o-" + account},
        ).raise_for_status()
    return str(account)


def new_key(gw: Gateway, account: str, **body: Any) -> dict[str, Any]:
    with gw.admin() as admin:
        made = admin.post(f"/admin/accounts/{account}/keys", json={"name": "k", **body})
        assert made.status_code == 201, made.text
        key: dict[str, Any] = made.json()
    return key


def usage_by_key(gw: Gateway, account: str, requests: int) -> dict[str, dict[str, Any]]:
    """The ledger's usage of the account grouped by key, once it holds ``requests`` records."""
    deadline = time.monotonic() + 30
    with gw.admin() as admin:
        while True:
            page = admin.get(f"/admin/accounts/{account}/usage", params={"group_by": "key"})
            groups = {g["key"]: g for g in page.raise_for_status().json()["data"]}
            if sum(g["requests"] for g in groups.values()) >= requests or time.monotonic() > deadline:
                return groups
            time.sleep(0.1)


def test_a_capped_key_is_refused_while_another_key_goes_on(gateway: Gateway) -> None:
    cap = 300
    account = funded_account(gateway)
    capped = new_key(gateway, account, credit_limit={"credits": cap, "period": "day"})
    free = new_key(gateway, account)
    assert capped["credit_limit"] == {"credits": cap, "period": "day"} and free["credit_limit"] is None
    client = openai.OpenAI(base_url=gateway.v1, api_key=capped["key"], max_retries=0, timeout=30)
    other = openai.OpenAI(base_url=gateway.v1, api_key=free["key"], max_retries=0, timeout=30)
    served = 0
    try:
        for _ in range(100):
            try:
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
            except openai.APIStatusError as error:
                refused = error
                break
            served += 1
        else:
            raise AssertionError("the capped key was never refused")
        assert refused.status_code == 402 and refused.code == "key_credit_limit"
        assert refused.type == "insufficient_quota"
        assert f"{cap} credits per day" in refused.message and "spent this day" in refused.message
        for _ in range(3):  # the account's other key goes on being served
            answer = other.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
            assert answer.choices[0].message.content
        with pytest.raises(openai.APIStatusError) as again:  # and the capped key stays refused
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
        assert again.value.status_code == 402 and again.value.code == "key_credit_limit"
    finally:
        client.close()
        other.close()
    assert served >= 5  # the cap, not something else, stopped it
    usage = usage_by_key(gateway, account, served + 3)
    spent = usage[capped["id"]]["charge"]
    assert usage[capped["id"]]["requests"] == served and 0 < spent <= cap
    assert usage[free["id"]]["requests"] == 3
    with gateway.client(capped["key"]) as me:
        mine = me.get("/v1/me").raise_for_status().json()["key"]
    assert mine["credit_limit"] == {"credits": cap, "period": "day"}
    assert mine["spent_in_period"] == spent
    with gateway.client(free["key"]) as me:
        theirs = me.get("/v1/me").raise_for_status().json()["key"]
    assert (theirs["credit_limit"], theirs["spent_in_period"]) == (None, None)
    # A higher cap lets it go on at once.
    with gateway.admin() as admin:
        higher = {"credit_limit": {"credits": cap + 200, "period": "day"}}
        raised = admin.patch(f"/admin/keys/{capped['id']}", json=higher)
        assert raised.status_code == 200 and raised.json()["credit_limit"]["credits"] == cap + 200
    with gateway.client(capped["key"]) as c:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8}
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        assert c.get("/v1/me").json()["key"]["spent_in_period"] > spent


def test_caps_are_validated_and_shown_on_every_key_answer(gateway: Gateway) -> None:
    account = funded_account(gateway, 1000)
    bad_caps: list[Any] = [
        {"credits": 0, "period": "day"},
        {"credits": -5, "period": "day"},
        {"credits": 10, "period": "week"},
        {"credits": "10", "period": "day"},
        {"credits": True, "period": "day"},
        {"credits": 1.5, "period": "day"},
        {"credits": 10},
        {"period": "day"},
        {"credits": 10, "period": "day", "currency": "CNY"},
        {"credits": 2**50 + 1, "period": "total"},
        5,
        "100/day",
    ]
    key = new_key(gateway, account, credit_limit={"credits": 10, "period": "total"})
    with gateway.admin() as admin:
        for cap in bad_caps:
            made = admin.post(f"/admin/accounts/{account}/keys", json={"name": "k", "credit_limit": cap})
            assert made.status_code in (400, 422), (cap, made.text)
            assert made.json()["error"]["type"] == "invalid_request_error"
            changed = admin.patch(f"/admin/keys/{key['id']}", json={"credit_limit": cap})
            assert changed.status_code in (400, 422), (cap, changed.text)
        unknown = admin.post(f"/admin/accounts/{account}/keys", json={"name": "k", "credit_cap": 5})
        assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "credit_cap"
        listed = admin.get(f"/admin/accounts/{account}/keys").json()["data"]
        assert [k["credit_limit"] for k in listed] == [{"credits": 10, "period": "total"}]  # none was made
        monthly = {"credits": 50, "period": "month"}
        changed = admin.patch(f"/admin/keys/{key['id']}", json={"credit_limit": monthly})
        assert changed.status_code == 200 and changed.json()["credit_limit"] == monthly
        kept = admin.patch(f"/admin/keys/{key['id']}", json={"rpm": 5})  # absent: unchanged
        assert kept.json()["credit_limit"] == monthly and kept.json()["rpm"] == 5
        with gateway.client(key["key"]) as me:
            assert me.get("/v1/me").json()["key"]["spent_in_period"] == 0
        removed = admin.patch(f"/admin/keys/{key['id']}", json={"credit_limit": None})
        assert removed.status_code == 200 and removed.json()["credit_limit"] is None
        [listed_key] = admin.get(f"/admin/accounts/{account}/keys").json()["data"]
        assert listed_key["credit_limit"] is None and listed_key["rpm"] == 5
    with gateway.client(key["key"]) as me:
        assert me.get("/v1/me").json()["key"]["spent_in_period"] is None


def test_the_cli_sets_shows_and_clears_a_cap(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENGATE_CONTROL_URL", gateway.control)
    monkeypatch.setenv("TOKENGATE_ADMIN_KEY", ADMIN_KEY)

    def tg(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exit_:
            status = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return status, out, err

    account = funded_account(gateway, 1000)
    status, out, _ = tg(
        "keys", "create", account, "--name", "app", "--credit-limit", "5000", "--period", "day"
    )
    assert status == 0 and "CREDIT LIMIT" in out and "5000/day" in out
    status, out, _ = tg("keys", "list", account, "--json")
    [key] = json.loads(out)["data"]
    assert key["credit_limit"] == {"credits": 5000, "period": "day"}
    status, out, _ = tg("keys", "update", key["id"], "--credit-limit", "70", "--period", "total", "--json")
    assert status == 0 and json.loads(out)["credit_limit"] == {"credits": 70, "period": "total"}
    status, out, _ = tg("keys", "list", account)
    assert status == 0 and "70 total" in out
    status, out, _ = tg("keys", "update", key["id"], "--no-credit-limit")
    assert status == 0 and "none" in out.splitlines()[1].split()
    status, _, err = tg("keys", "update", key["id"], "--credit-limit", "70")
    assert status == 2 and "--period" in err
    status, _, err = tg("keys", "update", key["id"], "--no-credit-limit", "--period", "day")
    assert status == 2 and "alone" in err
    status, _, err = tg("keys", "create", account, "--name", "x", "--credit-limit", "5", "--period", "week")
    assert status == 2 and "invalid choice" in err
