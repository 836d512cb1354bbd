"""The console's admin pages, driven over HTTP as a browser drives them: real processes (both
planes over vLLM simulators, PostgreSQL, Redis), the first admin made with
``tokengate console create-admin`` against the same DATABASE_URL, forms posted with the CSRF
token read from the pages.
"""

from __future__ import annotations

import asyncio
import html
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from urllib.parse import unquote

import asyncpg
import httpx
import pytest

from tests.support.catalogs import model, write_catalog
from tests.support.processes import (
    ROOT,
    Gateway,
    Sims,
    billing_command,
    environment,
    start_billing_worker,
    start_gateway,
    start_sims,
    stop_process,
    tokengate,
)

pytestmark = pytest.mark.timeout(180)
PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/9"
SERVED = "org/Chat-Model-7B"
PASSWORD = "correct horse battery"


async def _pg(sql: str) -> None:
    conn = await asyncpg.connect(PG, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    name = "tg_console_admin_" + secrets.token_hex(4)
    try:
        asyncio.run(_pg(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        pytest.skip(f"PostgreSQL not reachable at {PG}: {error}")
    url = PG.rsplit("/", 1)[0] + "/" + name
    try:
        done = billing_command(REDIS_URL, url, "migrate")
        assert done.returncode == 0, done.stderr
        yield url
    finally:
        asyncio.run(_pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="module")
def sims() -> Iterator[Sims]:
    sims = start_sims(2, SERVED)
    yield sims
    sims.stop()


@pytest.fixture(scope="module")
def gateway(database_url: str, sims: Sims, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("console-admin")
    config = write_catalog(
        tmp / "models.yaml",
        {"east": [sims.url(0)], "west": [sims.url(1)]},
        [model("chat-model", ["east", "west"], served_name=SERVED)],
    )
    gw = start_gateway(
        config,
        REDIS_URL,
        tmp / "gateway.log",
        database_url=database_url,
        TOKENGATE_AUTH_CACHE_SECONDS="1",
        TOKENGATE_PAYMENT_PROVIDER="test",
    )
    worker = start_billing_worker(REDIS_URL, database_url, tmp / "worker.log")  # usage into the ledger
    yield gw
    stop_process(worker)
    gw.stop()


def create_admin(
    database_url: str, *args: str, password: str | None = PASSWORD
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tokengate("console", "create-admin", *args),
        env=environment(REDIS_URL, database_url),
        input=None if password is None else password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page[:2000]
    return html.unescape(found.group(1))


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, name
    return html.unescape(found.group(1))


def browser(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.control, timeout=15, follow_redirects=False)


def sign_in(gateway: Gateway, email: str, password: str = PASSWORD) -> httpx.Client:
    client = browser(gateway)
    page = client.get("/console/signin")
    done = client.post(
        "/console/signin", data={"csrf": csrf_of(page.text), "email": email, "password": password}
    )
    assert done.status_code == 303, done.text
    return client


@pytest.fixture(scope="module")
def admin_email(database_url: str, gateway: Gateway) -> str:
    email = f"root-{secrets.token_hex(3)}@example.com"
    made = create_admin(database_url, "--email", email, "--password-stdin")
    assert made.returncode == 0, made.stderr
    assert email in made.stdout and PASSWORD not in made.stdout + made.stderr
    return email


@pytest.fixture
def admin(gateway: Gateway, admin_email: str) -> Iterator[httpx.Client]:
    client = sign_in(gateway, admin_email)
    yield client
    client.close()


def available(client: httpx.Client, account_id: str) -> int:
    page = client.get(f"/console/admin/accounts/{account_id}")
    assert page.status_code == 200, page.text
    found = re.search(r'data-figure="available">(-?\d+)<', page.text)
    assert found, page.text
    return int(found.group(1))


def chat(gateway: Gateway, key: str) -> int:
    body = {"model": "chat-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with gateway.client(key) as client:
        return client.post("/v1/chat/completions", json=body).status_code


def test_create_admin_cli_refuses_bad_input(database_url: str, gateway: Gateway, admin_email: str) -> None:
    again = create_admin(database_url, "--email", admin_email.upper(), "--password-stdin")
    assert again.returncode == 1 and "exists" in again.stderr
    short = create_admin(database_url, "--email", "x-" + admin_email, "--password-stdin", password="short")
    assert short.returncode == 2 and "8 characters" in short.stderr
    no_tty = create_admin(database_url, "--email", "y-" + admin_email)  # stdin is a pipe: no prompt
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    on_line = create_admin(database_url, "--email", "z-" + admin_email, "--password", PASSWORD, password=None)
    assert on_line.returncode == 2


def test_admin_finds_adjusts_and_disables_an_account(
    gateway: Gateway, admin: httpx.Client, admin_email: str
) -> None:
    name = f"Acme {secrets.token_hex(3)}"
    with gateway.admin() as api:
        account = api.post("/admin/accounts", json={"name": name}).raise_for_status().json()
        key = api.post(f"/admin/accounts/{account['id']}/keys", json={"name": "k"}).raise_for_status().json()
    account_id = account["id"]

    found = admin.get("/console/admin/accounts", params={"q": name.split()[1].upper()})
    assert found.status_code == 200 and f'href="/console/admin/accounts/{account_id}"' in found.text
    assert html.escape(name) in found.text

    before = available(admin, account_id)
    page = admin.get(f"/console/admin/accounts/{account_id}").text
    form = {
        "csrf": csrf_of(page),
        "idempotency_key": hidden(page, "idempotency_key"),
        "credits": "500",
        "reason": "goodwill",
    }
    first = admin.post(f"/console/admin/accounts/{account_id}/adjust", data=form)
    second = admin.post(f"/console/admin/accounts/{account_id}/adjust", data=form)  # a double submit
    assert first.status_code == second.status_code == 303
    assert "done=adjusted" in first.headers["location"] and "done=again" in second.headers["location"]
    assert available(admin, account_id) == before + 500
    assert gateway.balance(account_id)["available"] == before + 500
    assert chat(gateway, key["key"]) == 200

    page = admin.get(f"/console/admin/accounts/{account_id}").text
    done = admin.post(f"/console/admin/accounts/{account_id}/disable", data={"csrf": csrf_of(page)})
    assert done.status_code == 303
    shown = admin.get(done.headers["location"]).text
    assert re.search(r'id="account-state">disabled<', shown)
    deadline = time.monotonic() + 10
    while (status := chat(gateway, key["key"])) == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status in (401, 403)

    log = admin.get("/console/admin/audit", params={"target": f"account:{account_id}"})
    assert log.status_code == 200
    assert "console.adjustment" in log.text and "console.account.disable" in log.text
    assert f"admin:{admin_email}" in log.text


def test_admin_sees_endpoints_health(gateway: Gateway, sims: Sims, admin: httpx.Client) -> None:
    deadline = time.monotonic() + 15
    while True:
        page = admin.get("/console/admin/endpoints")
        assert page.status_code == 200
        rows = {
            url: re.search(rf'data-endpoint="{re.escape(url)}">.*?class="state-(\w+)"', page.text, re.S)
            for url in (sims.url(0), sims.url(1))
        }
        if all(row and row.group(1) == "up" for row in rows.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert all(row and row.group(1) == "up" for row in rows.values()), page.text
    assert "east" in page.text and "west" in page.text


def test_admin_reads_the_api_reference(admin: httpx.Client) -> None:
    """Every route of the control plane with its parameters, body and answers, in the console
    (a browser cannot send the admin key that /admin/docs asks for)."""
    page = admin.get("/console/admin/api")
    assert page.status_code == 200
    text = html.unescape(page.text)
    assert 'href="#post-admin-accounts-account_id-adjustments"' in text
    operation = text.split('id="get-admin-accounts-account_id-usage"', 1)[1].split("</article>", 1)[0]
    assert "<code>group_by</code>" in operation and "<code>cursor</code>" in operation
    schema = text.split('id="schema-PackageBody"', 1)[1].split("<h3", 1)[0]
    assert "<code>weight</code>" in schema and "<= 100" in schema
    assert "api_" not in admin.get("/console/admin/api", params={"lang": "zh"}).text


def test_customer_gets_403_on_admin_pages(gateway: Gateway, admin: httpx.Client) -> None:
    with gateway.admin() as api:
        account = api.post("/admin/accounts", json={"name": "victim"}).raise_for_status().json()
    with browser(gateway) as customer:
        page = customer.get("/console/signup").text
        email = f"cust-{secrets.token_hex(3)}@example.com"
        signed = customer.post(
            "/console/signup",
            data={"csrf": csrf_of(page), "email": email, "password": PASSWORD, "organization": "Cust Co"},
        )
        assert signed.status_code == 303
        for path in (
            "/console/admin",
            "/console/admin/accounts",
            f"/console/admin/accounts/{account['id']}",
            "/console/admin/packages",
            "/console/admin/codes",
            "/console/admin/orders",
            "/console/admin/audit",
            "/console/admin/usage",
            "/console/admin/endpoints",
            "/console/admin/api",
        ):
            assert customer.get(path).status_code == 403, path
        csrf = re.search(r'name="csrf" value="([^"]+)"', customer.get("/console/prices").text)
        token = csrf.group(1) if csrf else "none"
        for path, data in (
            (
                f"/console/admin/accounts/{account['id']}/adjust",
                {"credits": "1000", "reason": "x", "idempotency_key": "k1"},
            ),
            (f"/console/admin/accounts/{account['id']}/disable", {}),
            ("/console/admin/packages", {"name": "free", "credits": "9", "valid_days": "9"}),
            ("/console/admin/codes", {"package_id": "p", "count": "1"}),
            ("/console/admin/packages/starter/withdraw", {}),
        ):
            assert customer.post(path, data={"csrf": token, **data}).status_code == 403, path
    assert available(admin, account["id"]) == 0


def test_post_without_csrf_is_refused(gateway: Gateway, admin: httpx.Client) -> None:
    account_id, _key = gateway.new_account(credits=0)
    page = admin.get(f"/console/admin/accounts/{account_id}").text
    form = {"idempotency_key": hidden(page, "idempotency_key"), "credits": "700", "reason": "r"}
    assert admin.post(f"/console/admin/accounts/{account_id}/adjust", data=form).status_code == 403
    forged = {**form, "csrf": "not-the-token"}
    assert admin.post(f"/console/admin/accounts/{account_id}/adjust", data=forged).status_code == 403
    assert admin.post(f"/console/admin/accounts/{account_id}/disable", data={}).status_code == 403
    assert available(admin, account_id) == 0
    assert "adm_" not in page and 'id="account-state">active<' in page


def test_bad_input_is_shown_next_to_fields(gateway: Gateway, admin: httpx.Client) -> None:
    account_id, _ = gateway.new_account(credits=0)
    page = admin.get(f"/console/admin/accounts/{account_id}").text
    form = {"csrf": csrf_of(page), "idempotency_key": hidden(page, "idempotency_key"), "reason": ""}
    for credits in ("abc", "0", "9" * 30):
        bad = admin.post(f"/console/admin/accounts/{account_id}/adjust", data={**form, "credits": credits})
        assert bad.status_code == 400, credits
        assert 'id="e-credits"' in bad.text and 'id="e-reason"' in bad.text
    debit = admin.post(
        f"/console/admin/accounts/{account_id}/adjust", data={**form, "credits": "-5", "reason": "too much"}
    )
    assert debit.status_code == 409 and "fewer than 5 credits" in debit.text
    assert admin.get("/console/admin/accounts/acct_nope").status_code == 404
    assert admin.get("/console/admin/accounts/a%00b").status_code == 404
    assert admin.get("/console/admin/audit", params={"cursor": "garbage!"}).status_code == 400
    assert admin.get("/console/admin/accounts", params={"cursor": "garbage!"}).status_code == 400
    assert admin.get("/console/admin/usage", params={"from": "yesterday"}).status_code == 400
    assert admin.get("/console/admin/orders", params={"status": "stolen"}).status_code == 400
    assert admin.get("/console/admin/orders/ord_nope").status_code == 404
    assert admin.get("/console/admin/codes", params={"status": "x", "cursor": "?"}).status_code == 400


def test_packages_and_codes(gateway: Gateway, admin: httpx.Client) -> None:
    package_id = "pkg-" + secrets.token_hex(3)
    page = admin.get("/console/admin/packages").text
    made = admin.post(
        "/console/admin/packages",
        data={
            "csrf": csrf_of(page),
            "id": package_id,
            "name": "Pro",
            "credits": "1000",
            "valid_days": "30",
            "price_amount": "4900",
            "currency": "cny",
            "for_sale": "on",
            "weight": "3",
        },
    )
    assert made.status_code == 303, made.text
    listed = admin.get(made.headers["location"]).text
    assert package_id in listed and "4900 CNY" in listed
    with gateway.admin() as api:
        stored = {p["id"]: p for p in api.get("/admin/packages").json()["data"]}
    assert stored[package_id]["weight"] == 3  # its tier in fair shares
    withdrawn = admin.post(f"/console/admin/packages/{package_id}/withdraw", data={"csrf": csrf_of(page)})
    assert withdrawn.status_code == 303
    shown = admin.get(withdrawn.headers["location"]).text
    assert f"Package {package_id} is off sale" in shown
    assert package_id not in {p["id"] for p in httpx.get(gateway.base + "/v1/packages").json()["data"]}
    sold = admin.post(f"/console/admin/packages/{package_id}/sell", data={"csrf": csrf_of(page)})
    assert sold.status_code == 303
    assert package_id in {p["id"] for p in httpx.get(gateway.base + "/v1/packages").json()["data"]}
    assert admin.post(f"/console/admin/packages/{package_id}/sell", data={}).status_code == 403  # no csrf
    assert admin.post("/console/admin/packages/nope-x/sell", data={"csrf": csrf_of(page)}).status_code == 404
    with gateway.admin() as api:
        log = api.get("/admin/audit", params={"target": f"package:{package_id}"}).json()["data"]
    changes = [e["action"] for e in log]
    assert {"console.package.off_sale", "console.package.on_sale"} <= set(changes)
    too_heavy = admin.post(
        "/console/admin/packages",
        data={"csrf": csrf_of(page), "name": "Heavy", "credits": "5", "valid_days": "1", "weight": "101"},
    )
    assert too_heavy.status_code == 400 and 'id="e-weight"' in too_heavy.text
    unpriced = admin.post(
        "/console/admin/packages",
        data={"csrf": csrf_of(page), "name": "Free", "credits": "5", "valid_days": "1", "for_sale": "on"},
    )
    assert unpriced.status_code == 400 and 'id="e-price_amount"' in unpriced.text

    page = admin.get("/console/admin/codes").text
    minted = admin.post(
        "/console/admin/codes",
        data={"csrf": csrf_of(page), "package_id": package_id, "count": "3", "valid_days": ""},
    )
    assert minted.status_code == 201
    codes = re.findall(r'class="minted-code">([^<]+)<', minted.text)
    assert len(codes) == 3
    link = re.search(r'href="(data:text/csv[^"]+)" download', minted.text)
    assert link is not None
    batch_csv = unquote(html.unescape(link.group(1)).split(",", 1)[1])
    assert batch_csv.splitlines()[0] == "code,package_id,expires_at"
    assert sorted(line.split(",")[0] for line in batch_csv.splitlines()[1:]) == sorted(codes)
    again = admin.get("/console/admin/codes", params={"package": package_id})
    assert again.status_code == 200 and again.text.count("<td>unused</td>") == 3
    assert not any(code in again.text for code in codes)
    missing = admin.post(
        "/console/admin/codes", data={"csrf": csrf_of(page), "package_id": "no-such", "count": "1"}
    )
    assert missing.status_code == 404 and 'id="e-package_id"' in missing.text


def test_admin_refunds_a_paid_order(gateway: Gateway, admin: httpx.Client, admin_email: str) -> None:
    package_id = "buy-" + secrets.token_hex(3)
    account_id, key = gateway.new_account(credits=0)
    with gateway.admin() as api:
        api.post(
            "/admin/packages",
            json={
                "id": package_id,
                "name": "Buy",
                "credits": 5000,
                "valid_days": 30,
                "price": {"amount": 4900, "currency": "CNY"},
                "for_sale": True,
            },
        ).raise_for_status()
    with gateway.client(key) as client:
        order = client.post("/v1/me/orders", json={"package_id": package_id}).raise_for_status().json()
    assert httpx.post(order["checkout_url"], follow_redirects=True, timeout=15).status_code == 200
    assert available(admin, account_id) == 5000

    listed = admin.get("/console/admin/orders", params={"status": "paid"})
    assert listed.status_code == 200 and f'href="/console/admin/orders/{order["id"]}"' in listed.text
    page = admin.get(f"/console/admin/orders/{order['id']}").text
    assert 'id="order-status">paid<' in page
    empty = admin.post(
        f"/console/admin/orders/{order['id']}/refund", data={"csrf": csrf_of(page), "reason": ""}
    )
    assert empty.status_code == 400 and 'id="e-reason"' in empty.text
    done = admin.post(
        f"/console/admin/orders/{order['id']}/refund",
        data={"csrf": csrf_of(page), "reason": "asked by the customer"},
    )
    assert done.status_code == 303
    assert 'id="order-status">refunded<' in admin.get(done.headers["location"]).text
    assert available(admin, account_id) == 0
    log = admin.get("/console/admin/audit", params={"target": f"order:{order['id']}"}).text
    assert "order.refunded" in log and "console.order.refund" in log and f"admin:{admin_email}" in log
    assert "refunded" in admin.get("/console/admin/orders", params={"status": "refunded"}).text


def test_usage_across_accounts(gateway: Gateway, admin: httpx.Client) -> None:
    _, key = gateway.new_account(credits=100_000)
    assert chat(gateway, key) == 200
    deadline = time.monotonic() + 20
    while True:
        page = admin.get("/console/admin/usage")
        assert page.status_code == 200
        if "<td>chat-model</td>" in page.text or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert "<td>chat-model</td>" in page.text, page.text
    assert '<svg class="chart" role="img"' in page.text and "Credits charged per day" in page.text
    later = admin.get("/console/admin/usage", params={"from": "2999-01-01"})
    assert later.status_code == 200 and "<td>chat-model</td>" not in later.text


def test_pages_speak_chinese(gateway: Gateway, admin: httpx.Client) -> None:
    for path in (
        "/console/admin",
        "/console/admin/accounts",
        "/console/admin/packages",
        "/console/admin/codes",
        "/console/admin/orders",
        "/console/admin/audit",
        "/console/admin/usage",
        "/console/admin/endpoints",
        "/console/admin/api",
    ):
        page = admin.get(path, params={"lang": "zh"})
        assert page.status_code == 200, path
        assert "adm_" not in page.text and "审计日志" in page.text, path
