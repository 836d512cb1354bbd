"""Redemption codes over HTTP, on each ledger backend: both planes as processes (the data plane
forwards ``/v1/me/redeem`` to the control plane and sets ``X-Forwarded-For`` itself), and a
second control plane that trusts no proxy on loopback. The admin routes and their CSV, the
redeem route's answers, the limits per account and per address, the acceptance test (50
concurrent redemptions of one code), and the admin CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from sqlalchemy import text

from billing.code_attempts import FAILURE_LIMIT, address_key
from billing.code_format import canonical, code_hash
from billing.db.engine import create_engine
from launcher.cli import main
from launcher.embedded import free_port
from tests.support.processes import environment, start_control

from .procs import ADMIN_KEY, Gateway, start_gateway, stop_process, write_config

pytestmark = pytest.mark.timeout(180)
CODE = re.compile(r"^TG(-[0-9A-HJKMNP-TV-Z]{5}){4}$")
UNKNOWN = "TG-00000-00000-00000-00000"


@pytest.fixture(scope="module")
def planes(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    """Both planes (no upstream is needed), and a control plane trusting only 192.0.2.0/24."""
    from tests.redis_servers import redis_server

    tmp = tmp_path_factory.mktemp("codes")
    with redis_server() as server:
        config = write_config(tmp / "models.yaml", free_port())  # nothing listens: no request goes there
        gw = start_gateway(config, server.url, ledger_url, tmp / "gw.log")
        env = environment(
            server.url, ledger_url, TOKENGATE_TRUSTED_PROXIES="192.0.2.0/24", TOKENGATE_AUTH_CACHE_SECONDS="1"
        )
        try:
            untrusting, url = start_control(config, env, tmp / "untrusting.log")
        except BaseException:
            gw.stop()
            raise
        try:
            yield gw, url
        finally:
            stop_process(untrusting)
            gw.stop()


@pytest.fixture
def gw(planes: tuple[Gateway, str]) -> Iterator[Gateway]:
    """The gateway, with loopback's failed attempts forgotten before and after each test (every
    request through the data plane, and every direct one without a header, is 127.0.0.1)."""
    with sync_redis.Redis.from_url(planes[0].redis_url) as client:
        client.delete(address_key("127.0.0.1"))
        yield planes[0]
        client.delete(address_key("127.0.0.1"))


def package(gw: Gateway, credits: int = 1000) -> str:
    with gw.admin() as admin:
        made = admin.post("/admin/packages", json={"name": "gift", "credits": credits, "valid_days": 30})
    assert made.status_code == 201, made.text
    pid: str = made.json()["id"]
    return pid


def mint(gw: Gateway, pid: str, count: int = 1, **extra: Any) -> list[str]:
    with gw.admin() as admin:
        made = admin.post("/admin/codes", json={"package_id": pid, "count": count, **extra})
    assert made.status_code == 201, made.text
    return [c["code"] for c in made.json()["data"]]


def redeem(base: str, key: str, code: str, forwarded: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **({"X-Forwarded-For": forwarded} if forwarded else {})}
    return httpx.post(base + "/v1/me/redeem", json={"code": code}, headers=headers, timeout=30)


def sql(gw: Gateway, query: str, **params: Any) -> list[Any]:
    async def run() -> list[Any]:
        engine = create_engine(gw.database_url)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(query), params)
                return list(result) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_minting_and_listing_codes(gw: Gateway) -> None:
    pid = package(gw)
    with gw.admin() as admin:
        made = admin.post("/admin/codes", json={"package_id": pid, "count": 3, "valid_days": 10})
        assert made.status_code == 201 and set(made.json()) == {"data", "batch_id"}
        batch, issued = made.json()["batch_id"], made.json()["data"]
        assert [set(c) for c in issued] == [{"code", "package_id", "expires_at"}] * 3
        assert all(CODE.match(c["code"]) and c["package_id"] == pid and c["expires_at"] for c in issued)
        for ask in ({"params": {"format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
            as_csv = admin.post("/admin/codes", json={"package_id": pid, "count": 4}, **ask)
            assert as_csv.status_code == 201 and as_csv.headers["content-type"].startswith("text/csv")
            assert "attachment" in as_csv.headers["content-disposition"]
            rows = list(csv.DictReader(io.StringIO(as_csv.text)))
            assert len(rows) == 4 and list(rows[0]) == ["code", "package_id", "expires_at"]
            assert all(
                CODE.match(r["code"]) and r["package_id"] == pid and r["expires_at"] == "" for r in rows
            )
        listed = admin.get("/admin/codes", params={"batch_id": batch})
        assert listed.status_code == 200 and set(listed.json()) == {"data", "next_cursor"}
        data = listed.json()["data"]
        assert len(data) == 3 and {c["status"] for c in data} == {"unused"}
        assert set(data[0]) == {
            "id",
            "batch_id",
            "package_id",
            "status",
            "created_at",
            "expires_at",
            "redeemed_at",
            "redeemed_by",
            "grant_id",
        }
        seen, cursor = [], None
        while True:  # pages of 2 over the package's 11 codes, each once
            page = admin.get(
                "/admin/codes",
                params={"package_id": pid, "limit": 2, **({"cursor": cursor} if cursor else {})},
            ).json()
            seen += [c["id"] for c in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 11
        exported = admin.get("/admin/codes", params={"package_id": pid, "format": "csv"})
        assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text)))
        assert sorted(r["id"] for r in rows) == sorted(seen) and {r["status"] for r in rows} == {"unused"}
        # the secrets are nowhere but in the minting answers
        everything = exported.text + json.dumps(admin.get("/admin/codes", params={"limit": 1000}).json())
        hashes = [r.code_hash for r in sql(gw, "SELECT code_hash FROM redemption_codes")]
        for code in [c["code"] for c in issued] + [r["code"] for r in rows if "code" in r]:
            assert code not in everything and code.replace("-", "")[2:] not in everything
        assert not any(h in everything for h in hashes)


def test_minting_and_listing_are_validated(gw: Gateway) -> None:
    pid = package(gw)
    with gw.admin() as admin:
        for body, status in (
            ({"package_id": pid, "count": 0}, 422),
            ({"package_id": pid, "count": 10_001}, 422),
            ({"package_id": pid, "count": "5"}, 422),  # no coercion
            ({"package_id": pid, "count": 1, "valid_days": 0}, 422),
            ({"package_id": pid, "count": 1, "credits": 9}, 422),  # unknown fields refused
            ({"count": 1}, 422),
            ({"package_id": "no-such-package", "count": 1}, 404),
            ({"package_id": "adjustment", "count": 1}, 400),
        ):
            refused = admin.post("/admin/codes", json=body)
            assert refused.status_code == status, (body, refused.text)
            assert set(refused.json()["error"]) == {"message", "type", "code", "param"}
        assert admin.post("/admin/codes", json={"package_id": pid, "count": 10_000}).status_code == 201
        assert (
            admin.post(
                "/admin/codes", params={"format": "xml"}, json={"package_id": pid, "count": 1}
            ).status_code
            == 422
        )
        assert (
            admin.post("/admin/codes", params={"dry": "1"}, json={"package_id": pid, "count": 1}).status_code
            == 400
        )
        assert admin.get("/admin/codes", params={"status": "lost"}).status_code == 422
        assert admin.get("/admin/codes", params={"pkg": pid}).status_code == 400
        assert admin.get("/admin/codes", params={"limit": 0}).status_code == 422
        assert admin.get("/admin/codes", params={"cursor": "garbage!"}).status_code == 400
        assert admin.get("/admin/codes", params={"format": "csv", "limit": 5}).status_code == 400
        assert (
            len(admin.get("/admin/codes", params={"package_id": pid, "limit": 1000}).json()["data"]) == 1000
        )
    with httpx.Client(base_url=gw.control) as anonymous:
        assert anonymous.post("/admin/codes", json={"package_id": pid, "count": 1}).status_code == 401
        assert anonymous.get("/admin/codes").status_code == 401


def test_redeeming_through_the_public_url(gw: Gateway) -> None:
    pid = package(gw, credits=2500)
    code, expiring = mint(gw, pid, 2)
    account, key = gw.new_account(0)
    typed = "  " + code.lower().replace("-", " ") + " "
    done = redeem(gw.base, key, typed)
    assert done.status_code == 201, done.text
    grant = done.json()["grant"]
    assert {"id", "package_id", "credits", "remaining", "valid_from", "valid_until", "order_id"} <= set(grant)
    assert (grant["package_id"], grant["credits"], grant["account_id"]) == (pid, 2500, account)
    with gw.client(key) as client:
        me = client.get("/v1/me").json()
    assert me["balance"]["purchased"] == me["balance"]["available"] == 2500
    assert [g["id"] for g in me["grants"]] == [grant["id"]]
    used = redeem(gw.base, key, code)
    assert used.status_code == 409 and used.json()["error"]["code"] == "code_redeemed"
    other_account, other_key = gw.new_account(0)
    assert redeem(gw.base, other_key, code).status_code == 409
    unknown = redeem(gw.base, key, UNKNOWN)
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    sql(
        gw,
        "UPDATE redemption_codes SET expires_at_ms = 1 WHERE code_hash = :h",
        h=code_hash(canonical(expiring) or ""),
    )  # as if its days had passed
    expired = redeem(gw.base, key, expiring)
    assert expired.status_code == 404 and expired.json()["error"]["code"] == "code_expired"
    with gw.admin() as admin:
        states = {c["status"] for c in admin.get("/admin/codes", params={"package_id": pid}).json()["data"]}
        assert states == {"redeemed", "expired"}
        assert admin.get(f"/admin/accounts/{other_account}").json()["balance"]["purchased"] == 0
    assert httpx.post(gw.base + "/v1/me/redeem", json={"code": code}).status_code == 401
    with gw.client(key) as client:
        assert (
            client.post("/v1/me/redeem", json={"code": code, "account_id": other_account}).status_code == 422
        )
        assert client.post("/v1/me/redeem", json={}).status_code == 422
        assert client.post("/v1/me/redeem", json={"code": "x" * 101}).status_code == 422


def test_failed_attempts_are_limited_per_address(gw: Gateway) -> None:
    """Straight to the control plane from loopback, a trusted proxy: its X-Forwarded-For is the
    client, so another address is another count."""
    pid = package(gw, credits=10)
    good, spare = mint(gw, pid, 2)
    attacker = f"203.0.113.{secrets.randbelow(250)}"
    for _ in range(FAILURE_LIMIT):
        _, key = gw.new_account(0)
        assert redeem(gw.control, key, UNKNOWN, attacker).status_code == 404
    _, key = gw.new_account(0)
    limited = redeem(gw.control, key, good, attacker)  # a fresh account, a valid code
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert 0 < int(limited.headers["retry-after"]) <= 900
    elsewhere = redeem(gw.control, key, good, "198.51.100.77")
    assert elsewhere.status_code == 201
    assert redeem(gw.control, key, spare, "198.51.100.77").status_code == 201  # successes do not count


def test_failed_attempts_are_limited_per_account(gw: Gateway) -> None:
    pid = package(gw, credits=10)
    (good,) = mint(gw, pid)
    _, key = gw.new_account(0)
    for i in range(FAILURE_LIMIT):
        assert redeem(gw.control, key, UNKNOWN, f"198.51.100.{i + 1}").status_code == 404
    assert redeem(gw.control, key, good, "198.51.100.200").status_code == 429
    _, other = gw.new_account(0)
    assert redeem(gw.control, other, good, "198.51.100.200").status_code == 201


def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(
    planes: tuple[Gateway, str], gw: Gateway
) -> None:
    """The second control plane trusts 192.0.2.0/24 only: from loopback, each forged header is
    ignored and every failure counts against 127.0.0.1."""
    untrusting = planes[1]
    pid = package(gw, credits=10)
    (good,) = mint(gw, pid)
    for i in range(FAILURE_LIMIT):
        _, key = gw.new_account(0)
        assert redeem(untrusting, key, UNKNOWN, f"203.0.113.{i + 1}").status_code == 404
    _, key = gw.new_account(0)
    assert redeem(untrusting, key, good, "203.0.113.250").status_code == 429
    assert redeem(untrusting, key, good, "192.0.2.1, 203.0.113.251").status_code == 429
    with sync_redis.Redis.from_url(gw.redis_url) as client:
        assert int(client.get(address_key("127.0.0.1")) or 0) == FAILURE_LIMIT
        assert not client.exists(address_key("203.0.113.1"))


def test_50_concurrent_redemptions_of_one_code_grant_once(gw: Gateway) -> None:
    """Acceptance: from several accounts at once through the public URL, exactly one 201; the
    rest 409 (or 429 once the failures pile up); the grant is in the ledger and Redis once."""
    pid = package(gw, credits=777)
    (code,) = mint(gw, pid)
    customers = [gw.new_account(0) for _ in range(5)]

    async def attempts() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=gw.base, timeout=60, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/me/redeem",
                        json={"code": code},
                        headers={"Authorization": f"Bearer {customers[i % 5][1]}"},
                    )
                    for i in range(50)
                )
            )

    answers = asyncio.run(attempts())
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(201) == 1 and set(statuses) <= {201, 409, 429}, statuses
    grant = next(a.json()["grant"] for a in answers if a.status_code == 201)
    rows = sql(
        gw,
        "SELECT g.id, g.account_id, g.credits FROM grants g JOIN redemption_codes c "
        "ON g.order_id = 'code:' || c.id WHERE c.package_id = :p",
        p=pid,
    )
    assert [(r.id, r.credits) for r in rows] == [(grant["id"], 777)]
    entries = sql(
        gw, "SELECT count(*) AS n FROM ledger_entries WHERE id = :e", e="purchase:" + grant["order_id"]
    )
    assert entries[0].n == 1
    with gw.admin() as admin:
        for account, _ in customers:
            view = admin.get(f"/admin/accounts/{account}").json()
            assert view["balance_source"] == "redis"
            mine = account == grant["account_id"]
            assert view["balance"]["purchased"] == (777 if mine else 0)
            assert [g["id"] for g in view["grants"]] == ([grant["id"]] if mine else [])
        (state,) = admin.get("/admin/codes", params={"package_id": pid}).json()["data"]
    assert (state["status"], state["grant_id"], state["redeemed_by"]) == (
        "redeemed",
        grant["id"],
        grant["account_id"],
    )


@pytest.fixture
def tg(gw: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``tg(*argv)``: (exit status, stdout, stderr) of ``tokengate *argv`` run in this process."""
    monkeypatch.setenv("TOKENGATE_CONTROL_URL", gw.control)
    monkeypatch.setenv("TOKENGATE_ADMIN_KEY", ADMIN_KEY)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exit_:
            status = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def test_the_cli_mints_and_lists_codes(gw: Gateway, tg: Any, tmp_path: Path) -> None:
    pid = package(gw, credits=40)
    status, out, err = tg("codes", "create", "--package", pid, "--count", "3", "--valid-days", "5")
    assert status == 0 and "shown this once" in err
    lines = out.splitlines()
    assert lines[0].split() == ["CODE", "PACKAGE", "EXPIRES"] and len(lines) == 4
    codes = [line.split()[0] for line in lines[1:]]
    assert all(CODE.match(c) for c in codes)
    status, out, _ = tg("codes", "create", "--package", pid, "--count", "2", "--json")
    batch = json.loads(out)
    assert status == 0 and len(batch["data"]) == 2 and batch["data"][0]["expires_at"] is None
    status, _, err = tg(
        "codes", "create", "--package", pid, "--count", "2", "--csv", "--out", str(tmp_path / "codes.csv")
    )
    rows = list(csv.DictReader(io.StringIO((tmp_path / "codes.csv").read_text())))
    assert status == 0 and len(rows) == 2 and "wrote 2 codes" in err
    _, key = gw.new_account(0)
    assert redeem(gw.base, key, codes[0]).status_code == 201
    status, out, _ = tg("codes", "list", "--package", pid, "--status", "redeemed")
    lines = out.splitlines()
    assert status == 0 and lines[0].split()[:4] == ["ID", "BATCH", "PACKAGE", "STATUS"] and len(lines) == 2
    assert "redeemed" in lines[1] and codes[0] not in out
    status, out, _ = tg("codes", "list", "--package", pid, "--json", "--limit", "3")
    page = json.loads(out)
    assert status == 0 and len(page["data"]) == 3 and page["next_cursor"]
    status, out, _ = tg("codes", "list", "--package", pid, "--csv")
    assert status == 0 and len(list(csv.DictReader(io.StringIO(out)))) == 7
    status, _, err = tg("codes", "create", "--package", "no-such-package", "--count", "1")
    assert status == 1 and err.strip() == "tokengate: package no-such-package not found (404)"
    status, _, err = tg("codes", "create", "--package", pid, "--count", "0")
    assert status == 2 and "--count" in err
    status, _, err = tg("codes", "list", "--status", "lost")
    assert status == 2 and "--status" in err
    for argv in (["codes"], ["codes", "create"], ["codes", "list"]):
        assert tg(*argv, "--help")[0] == 0
