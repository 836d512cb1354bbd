"""The customers' pages against both real planes: sign up, buy through the test provider,
redeem, keys, usage and its CSV, the playground, isolation between organizations, CSRF,
and bad input answered next to its field."""

from __future__ import annotations

import re
import time
from html import unescape

import httpx
import pytest

from .browser import Browser, error_of
from .conftest import MODEL, STARTER_CREDITS, TRIAL_CREDITS, Console


def create_key(browser: Browser, name: str, **limits: str) -> tuple[str, str]:
    """(key id, secret) of a key made with the console's form."""
    browser.get("/console/keys")
    page = browser.post("/console/keys", {"name": name, **limits})
    assert page.status_code == 201, page.text
    secret = re.search(r'<code id="new-secret">(tg-[^<]+)</code>', page.text)
    assert secret, page.text
    key_id = re.search(
        r'href="/console/keys/(key_[0-9a-f]+)/revoke" aria-label="Revoke ' + re.escape(name), page.text
    )
    assert key_id, page.text
    return key_id.group(1), secret.group(1)


def wait_for(browser: Browser, path: str, text: str, timeout: float = 20) -> str:
    """The page once it contains ``text`` (usage reaches the ledger through the worker)."""
    deadline = time.monotonic() + timeout
    while True:
        page = browser.get(path) if not path.endswith(".csv") else browser.http.get(path)
        if text in page.text or time.monotonic() > deadline:
            return page.text
        time.sleep(0.2)


def test_sign_up_shows_the_trial_credits_and_their_expiry(browser: Browser) -> None:
    assert browser.available() == TRIAL_CREDITS
    page = browser.get("/console/overview").text
    assert "expire on" in page  # the trial (5 days) expires within a week: a banner says so
    assert "Trial" in page


def test_buying_through_the_test_provider_adds_the_package(browser: Browser) -> None:
    page = browser.get("/console/buy")
    assert "49.00 CNY" in page.text and ">Buy</button>" in page.text
    order = browser.post("/console/buy", {"package_id": "starter"})
    assert order.status_code == 303
    checkout = httpx.URL(order.headers["location"])
    assert checkout.path.startswith("/pay/test/ord_")
    pay_page = browser.http.get(checkout.path)
    assert ">Pay</button>" in pay_page.text
    paid = browser.http.post(checkout.path)
    assert paid.status_code == 303
    landing = browser.http.get(paid.headers["location"])
    assert "Paid" in landing.text and 'href="/console/overview"' in landing.text
    assert browser.available() == TRIAL_CREDITS + STARTER_CREDITS
    assert "paid" in browser.get("/console/buy").text


def test_buying_an_unknown_package_is_a_message_not_an_order(browser: Browser) -> None:
    browser.get("/console/buy")
    for package in ("nope", "trial", "x" * 500):  # the trial package is not on sale
        page = browser.post("/console/buy", {"package_id": package})
        assert page.status_code in (400, 404), page.text
        assert "This package is not on sale." in page.text
    assert "No orders yet." in browser.get("/console/buy").text


def test_redeeming_a_code_minted_by_the_admin(console: Console, browser: Browser) -> None:
    with console.gateway.admin() as admin:
        minted = admin.post("/admin/codes", json={"package_id": "starter", "count": 1})
        code = minted.raise_for_status().json()["data"][0]["code"]
    browser.get("/console/redeem")
    page = browser.post("/console/redeem", {"code": code})
    assert page.status_code == 200, page.text
    assert f"Redeemed: {STARTER_CREDITS} credits" in page.text
    assert browser.available() == TRIAL_CREDITS + STARTER_CREDITS
    again = browser.post("/console/redeem", {"code": code})
    assert again.status_code == 409
    assert error_of(again.text, "code") == "This code has been redeemed already."
    unknown = browser.post("/console/redeem", {"code": "TGC-AAAA-BBBB-CCCC"})
    assert unknown.status_code == 404
    assert error_of(unknown.text, "code") == "No such code. Check it and try again."
    empty = browser.post("/console/redeem", {"code": "  "})
    assert empty.status_code == 400 and error_of(empty.text, "code") == "Enter a code."
    huge = browser.post("/console/redeem", {"code": "A" * 5000})
    assert huge.status_code == 400 and error_of(huge.text, "code")
    assert browser.available() == TRIAL_CREDITS + STARTER_CREDITS


def test_too_many_failed_codes_are_refused_next_to_the_field(browser: Browser) -> None:
    browser.get("/console/redeem")
    statuses = [browser.post("/console/redeem", {"code": f"TGC-{i:04d}-ZZZZ"}).status_code for i in range(10)]
    assert set(statuses) == {404}
    page = browser.post("/console/redeem", {"code": "TGC-0000-ZZZZ"})
    assert page.status_code == 429 and page.headers["retry-after"]
    assert (error_of(page.text, "code") or "").startswith("Too many failed attempts.")


def test_a_key_made_in_the_console_works_and_its_usage_shows(console: Console, browser: Browser) -> None:
    _, secret = create_key(
        browser, "ci key", models=MODEL, rpm="100", cap_credits="50000", cap_period="month"
    )
    keys_page = browser.get("/console/keys").text
    assert "ci key" in keys_page and "50000 per month" in keys_page
    raw = console.gateway.openai(secret).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=8
    )
    request_id = raw.headers["x-request-id"]
    assert raw.parse().usage is not None
    usage = wait_for(browser, "/console/usage", request_id)
    assert request_id in usage and "ci key" in usage
    assert usage.count('class="chart"') >= 6 and "<title" in usage and "<desc" in usage
    csv = browser.http.get("/console/usage.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].startswith("request_id,account_id,key_id,model")
    assert any(line.startswith(request_id + ",") for line in lines)
    other = Browser(console.gateway.control)
    other.sign_up()
    assert request_id not in other.http.get("/console/usage.csv").text
    assert request_id not in other.get("/console/usage").text
    other.close()


def test_a_revoked_key_stops_working(console: Console, browser: Browser) -> None:
    key_id, secret = create_key(browser, "short-lived")
    confirm = browser.get(f"/console/keys/{key_id}/revoke")
    assert confirm.status_code == 200 and ">Revoke key</button>" in confirm.text
    done = browser.post(f"/console/keys/{key_id}/revoke", {})
    assert done.status_code == 303
    assert "short-lived" not in browser.get("/console/keys").text
    with console.gateway.client(secret) as client:
        answer = client.get("/v1/me")
    assert answer.status_code == 401


def test_an_organization_cannot_touch_another_ones_keys(console: Console, browser: Browser) -> None:
    key_id, secret = create_key(browser, "mine")
    intruder = console.browser()
    intruder.sign_up()
    assert "mine" not in intruder.get("/console/keys").text
    assert intruder.http.get(f"/console/keys/{key_id}/revoke").status_code == 404
    refused = intruder.post(f"/console/keys/{key_id}/revoke", {})
    assert refused.status_code == 404 and "No such key in your organization." in refused.text
    for odd in ("key_0000000000000000", "x" * 300, "%00"):
        assert intruder.post(f"/console/keys/{odd}/revoke", {}).status_code == 404
    intruder.close()
    assert "mine" in browser.get("/console/keys").text
    with console.gateway.client(secret) as client:
        assert client.get("/v1/me").status_code == 200


def test_forms_without_the_csrf_token_are_refused(console: Console, browser: Browser) -> None:
    key_id, _ = create_key(browser, "kept")
    for path, fields in (
        ("/console/keys", {"name": "sneaky"}),
        (f"/console/keys/{key_id}/revoke", {}),
        ("/console/buy", {"package_id": "starter"}),
        ("/console/redeem", {"code": "TGC-AAAA"}),
    ):
        answer = browser.post(path, fields, csrf=False)
        assert answer.status_code == 403, path
        wrong = browser.post(path, [*fields.items(), ("csrf", "forged")], csrf=False)
        assert wrong.status_code == 403, path
    chat = browser.http.post("/console/playground/chat", json={"model": MODEL, "messages": []})
    assert chat.status_code == 403
    keys = browser.get("/console/keys").text
    assert "sneaky" not in keys and "kept" in keys
    assert "No orders yet." in browser.get("/console/buy").text


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        ({"name": ""}, {"name": "Enter a name (up to 200 characters)."}),
        ({"name": "k", "rpm": "ten"}, {"rpm": "Enter a whole number from 1 to 2147483647."}),
        (
            {"name": "k", "tpm": "9" * 30, "max_concurrency": "0"},
            {"tpm": "Enter a whole number", "max_concurrency": "Enter"},
        ),
        (
            {"name": "k", "rpm": "-5", "tpm": "1.5"},
            {"rpm": "Enter a whole number", "tpm": "Enter a whole number"},
        ),
        ({"name": "k", "cap_credits": "100"}, {"cap_period": "Pick the period of the cap."}),
        (
            {"name": "k", "cap_period": "week", "cap_credits": "5"},
            {"cap_period": "Pick the period of the cap."},
        ),
        (
            {"name": "k", "cap_period": "day"},
            {"cap_credits": "Enter the credits of the cap, or pick no cap."},
        ),
        ({"name": "k", "models": "no-such-model"}, {"models": "Unknown model: no-such-model."}),
    ],
)
def test_bad_key_forms_answer_400_next_to_the_field(
    browser: Browser, fields: dict[str, str], errors: dict[str, str]
) -> None:
    browser.get("/console/keys")
    page = browser.post("/console/keys", fields)
    assert page.status_code == 400, page.text
    for field, message in errors.items():
        shown = error_of(page.text, field)
        assert shown is not None and shown.startswith(message), (field, shown)
    assert "new-secret" not in page.text
    assert 'value="' + unescape(fields["name"]) + '"' in page.text  # what was typed is kept


def test_the_playground_streams_an_answer_and_its_cost(console: Console, browser: Browser) -> None:
    page = browser.get("/console/playground").text
    assert '<option value="chat-model">' in page and ">Send</button>" in page
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story"}]}
    headers = {"X-CSRF-Token": browser.csrf}
    chunks: list[str] = []
    with browser.http.stream("POST", "/console/playground/chat", json=body, headers=headers) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for chunk in answer.iter_text():
            chunks.append(chunk)
    text = "".join(chunks)
    assert len(chunks) > 1  # streamed as it came, not in one piece
    deltas = re.findall(r'"content":"([^"]*)"', text)
    assert "".join(deltas).strip()
    cost = re.search(
        r'event: cost\ndata: \{"prompt_tokens":(\d+),"completion_tokens":(\d+),"credits":(\d+)\}', text
    )
    assert cost, text
    prompt, completion, credits = (int(v) for v in cost.groups())
    assert completion > 0 and credits == -(-(prompt * 1000 + completion * 2000) // 1000)
    assert "console playground" not in browser.get("/console/keys").text  # revoked after the answer
    usage = wait_for(browser, "/console/usage", "console playground")
    assert "console playground" in usage
    assert browser.available() == TRIAL_CREDITS - credits


def test_the_playground_refuses_bad_requests(browser: Browser) -> None:
    browser.get("/console/playground")
    headers = {"X-CSRF-Token": browser.csrf}
    for body, param in (
        ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": MODEL, "messages": []}, "message"),
        ({"model": MODEL, "messages": [{"role": "system", "content": "hi"}]}, "message"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 40_000}]}, "message"),
        ({"model": MODEL, "messages": "hello"}, "message"),
        ([1, 2], "model"),
    ):
        answer = browser.http.post("/console/playground/chat", json=body, headers=headers)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, body
    garbage = browser.http.post("/console/playground/chat", content=b"{not json", headers=headers)
    assert garbage.status_code == 400
    assert "console playground" not in browser.get("/console/keys").text


def test_the_price_list_is_public_with_snippets(console: Console) -> None:
    page = httpx.get(console.gateway.control + "/console/prices", timeout=10)
    assert page.status_code == 200
    assert "Starter" in page.text and "49.00 CNY" in page.text and "Trial" not in page.text
    assert f'base_url="{console.gateway.v1}"' in unescape(page.text)
    assert f"curl {console.gateway.v1}/chat/completions" in unescape(page.text)
    assert 'data-copy="snippet-python"' in page.text


def test_customer_pages_need_a_session(console: Console) -> None:
    for path in (
        "/console/overview",
        "/console/buy",
        "/console/keys",
        "/console/usage",
        "/console/usage.csv",
        "/console/playground",
        "/console/redeem",
    ):
        answer = httpx.get(console.gateway.control + path, timeout=10)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/signin"), path


def test_pages_speak_chinese(browser: Browser) -> None:
    page = browser.http.get("/console/keys?lang=zh").text
    assert "创建密钥" in page and "名称" in page
    assert "可用额度" in browser.http.get("/console/overview").text  # the choice is remembered
