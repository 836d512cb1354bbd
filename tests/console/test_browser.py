"""The console in a real browser (headless Chromium through Playwright), as the acceptance
reads: a customer signs up and sees the trial credits, buys a package with the test provider,
redeems a code, creates a key, calls the API with it from the ``openai`` client and finds the
request on the Usage page and its chart, tries the playground; an admin finds the account,
adjusts its credits and sees the endpoints' health. Every page is located by the accessible
names of docs/console.md (English), and each is saved as <page>.png (headless.SCREENSHOTS).

Also: a member of an organization gets 403 on admin pages, a form posted without its CSRF
token is refused, and the 11th wrong password in a row shows the too-many message.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

import httpx
import openai
import pytest
from playwright.sync_api import BrowserContext, Page, Response, expect

from tests.console.headless import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    GIFT_CREDITS,
    MODEL,
    PASSWORD,
    TEAM_CREDITS,
    TRIAL_CREDITS,
    Deployment,
    chromium,
    deployment,
    eventually,
    new_context,
    number,
    screenshot,
)

__all__ = ["chromium", "deployment", "new_context"]  # the fixtures of headless.py this module uses
NewContext = Callable[..., BrowserContext]


def fresh_email(what: str) -> str:
    return f"{what}-{secrets.token_hex(4)}@example.com"


def sign_up(
    page: Page, deployment: Deployment, email: str, organization: str, shot: str | None = None
) -> None:
    page.goto(deployment.url + "/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Organization").fill(organization)
    if shot:
        screenshot(page, shot)
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/console/overview$"))


def sign_in(page: Page, deployment: Deployment, email: str, password: str) -> None:
    page.goto(deployment.url + "/signin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign in")).to_have_count(0)


def available_credits(page: Page) -> int:
    """The Overview's available credits (opened from the navigation)."""
    page.get_by_role("navigation", name="main").get_by_role("link", name="Overview").click()
    expect(page).to_have_url(re.compile(r"/console/overview$"))
    return number(page.get_by_label("Available credits").inner_text())


def go(page: Page, link: str) -> None:
    page.get_by_role("navigation", name="main").get_by_role("link", name=link).click()


@pytest.mark.timeout(300)
def test_a_customer_and_an_admin_walk_the_console(deployment: Deployment, new_context: NewContext) -> None:
    page = new_context().new_page()
    email, organization = fresh_email("owner"), f"Acme Labs {secrets.token_hex(3)}"

    # Sign up: the organization starts with the trial's credits.
    sign_up(page, deployment, email, organization, shot="signup")
    balance = available_credits(page)
    assert balance == TRIAL_CREDITS
    expect(page.get_by_role("navigation", name="main").get_by_role("link")).to_have_text(
        ["Overview", "Buy", "Redeem", "Keys", "Usage", "Playground", "Members"]
    )

    # Buy the Team package; pay on the test provider's page; the credits arrive.
    go(page, "Buy")
    expect(page.get_by_role("heading", name="Team")).to_be_visible()
    screenshot(page, "buy")
    buttons = page.get_by_role("button", name="Buy")
    expect(buttons).to_have_count(1)  # one per package on sale (the trial and the gift are not)
    buttons.click()
    expect(page).to_have_url(re.compile(r"/pay/test/[^/]+$"))
    screenshot(page, "pay")
    page.get_by_role("button", name="Pay").click()
    expect(page).to_have_url(re.compile(r"/pay/orders/[^/]+$"))
    expect(page.locator("#status")).to_have_text("paid")
    page.goto(deployment.url + "/overview")
    balance = available_credits(page)
    assert balance == TRIAL_CREDITS + TEAM_CREDITS
    screenshot(page, "overview")
    go(page, "Buy")
    expect(page.get_by_role("row").filter(has_text="Team").first).to_contain_text("paid")

    # Redeem a code: its package's credits are added.
    go(page, "Redeem")
    page.get_by_label("Code").fill(deployment.codes[0])
    page.get_by_role("button", name="Redeem").click()
    expect(page.get_by_role("status")).to_contain_text(f"{GIFT_CREDITS} credits")
    screenshot(page, "redeem")
    balance_after_redeem = available_credits(page)
    assert balance_after_redeem == balance + GIFT_CREDITS
    balance = balance_after_redeem

    # Create a key: its secret is shown once.
    go(page, "Keys")
    page.get_by_label("Name").fill("ci-bot")
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("status").filter(has_text="shown only once")
    expect(shown).to_contain_text("tg-")
    secret = re.search(r"tg-[A-Za-z0-9_\-]+", shown.inner_text())
    assert secret, shown.inner_text()
    expect(page.get_by_role("cell", name="ci-bot", exact=True)).to_be_visible()
    screenshot(page, "keys")
    page.reload()  # shown once: not on the next view of the page
    expect(page.get_by_text(secret.group(0))).to_have_count(0)

    # Call the API with that key from the official client.
    with openai.OpenAI(
        base_url=deployment.gateway.v1, api_key=secret.group(0), max_retries=0, timeout=30
    ) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello from the browser test"}], max_tokens=16
        )
        reply = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert reply.choices[0].message.content and reply.usage is not None

    # The request is on the Usage page (once the billing worker recorded it), with its chart.
    go(page, "Usage")
    row = page.get_by_role("row").filter(has_text=request_id)
    eventually(lambda: row.count() == 1, timeout=30, reload=page)
    expect(row).to_contain_text(MODEL)
    expect(row).to_contain_text("ci-bot")
    expect(page.locator("figure.chart svg").first).to_be_visible()
    screenshot(page, "usage")
    balance_after_call = available_credits(page)
    assert balance_after_call < balance
    balance = balance_after_call

    # The playground sends a message to a model, metered like any request.
    go(page, "Playground")
    page.get_by_label("Model").select_option(MODEL)
    page.get_by_label("Message").fill("Say hello")
    page.get_by_role("button", name="Send").click()
    answer = page.get_by_role("listitem").filter(has_text="Assistant")
    expect(answer).to_contain_text(re.compile(r"\d+ prompt \+ [1-9]\d* completion tokens · [1-9]\d* credits"))
    expect(answer.locator(".content")).not_to_be_empty()
    expect(page.get_by_role("alert")).to_be_hidden()
    screenshot(page, "playground")
    balance_after_playground = available_credits(page)  # metered like any request
    assert balance_after_playground < balance
    balance = balance_after_playground

    # An admin finds the account, adjusts its credits and sees the endpoints' health.
    admin = new_context().new_page()
    sign_in(admin, deployment, ADMIN_EMAIL, ADMIN_PASSWORD)
    expect(admin).to_have_url(re.compile(r"/console/admin$"))
    screenshot(admin, "admin")
    admin_nav = admin.get_by_role("navigation", name="Administration")
    admin_nav.get_by_role("link", name="Accounts", exact=True).click()
    admin.get_by_label("Name or account id").fill(organization)
    admin.get_by_role("button", name="Search").click()
    expect(admin.get_by_role("link", name=organization)).to_have_count(1)
    screenshot(admin, "admin-accounts")
    admin.get_by_role("link", name=organization).click()
    figure = admin.locator('[data-figure="available"]')
    before = number(figure.inner_text())
    admin.get_by_label("Credits").fill("12345")
    admin.get_by_label("Reason").fill("goodwill credit")
    admin.get_by_role("button", name="Apply").click()
    expect(admin.get_by_role("status")).to_contain_text("Adjusted by 12345 credits")
    assert number(figure.inner_text()) == before + 12345
    expect(admin.get_by_role("row").filter(has_text="goodwill credit")).to_contain_text("applied")
    screenshot(admin, "admin-account")
    assert available_credits(page) >= balance + 12345 - 100  # the customer sees it too
    admin_nav.get_by_role("link", name="Endpoints", exact=True).click()
    endpoint = admin.get_by_role("row").filter(has_text=deployment.endpoint)
    eventually(lambda: endpoint.count() == 1, reload=admin)
    expect(endpoint).to_contain_text("up")
    screenshot(admin, "admin-endpoints")
    admin_nav.get_by_role("link", name="API", exact=True).click()
    expect(admin.get_by_role("heading", name="API reference")).to_be_visible()
    admin.get_by_role("link", name="POST /admin/packages", exact=True).click()
    expect(admin.locator("#post-admin-packages")).to_be_in_viewport()
    screenshot(admin, "admin-api")


def test_a_member_of_an_organization_gets_403_on_admin_pages(
    deployment: Deployment, new_context: NewContext
) -> None:
    page = new_context().new_page()
    sign_up(page, deployment, fresh_email("member"), "Other Org")
    for path in ("/admin", "/admin/accounts", "/admin/endpoints"):
        response = page.goto(deployment.url + path)
        assert response is not None and response.status == 403, path
        expect(page.get_by_text("not available to you")).to_be_visible()
        expect(page.get_by_label("Name or account id")).to_have_count(0)


def test_a_form_without_its_csrf_token_is_refused(deployment: Deployment, new_context: NewContext) -> None:
    context = new_context()
    page = context.new_page()
    sign_up(page, deployment, fresh_email("csrf"), "Csrf Org")
    before = available_credits(page)
    # The session's cookie goes along (a cross-site page could make the browser send it); the token does not.
    refused = context.request.post(
        deployment.url + "/redeem", form={"code": deployment.codes[1]}, max_redirects=0
    )
    assert refused.status == 403
    refused = context.request.post(
        deployment.url + "/redeem", form={"code": deployment.codes[1], "csrf": "guess"}, max_redirects=0
    )
    assert refused.status == 403
    assert available_credits(page) == before  # nothing redeemed
    # Nor before a session: sign-up without the form's token makes nobody.
    with httpx.Client(timeout=10) as client:
        email = fresh_email("nocsrf")
        answer = client.post(
            deployment.url + "/signup",
            data={"email": email, "password": PASSWORD, "organization": "No Token"},
        )
        assert answer.status_code == 403 and "tg_session" not in answer.cookies
    # With the page's own form (its token), the same code is redeemed.
    go(page, "Redeem")
    page.get_by_label("Code").fill(deployment.codes[1])
    page.get_by_role("button", name="Redeem").click()
    expect(page.get_by_role("status")).to_contain_text(f"{GIFT_CREDITS} credits")


def test_sign_in_is_rate_limited_after_ten_wrong_passwords(
    deployment: Deployment, new_context: NewContext
) -> None:
    # The control plane trusts loopback proxies' X-Forwarded-For: this browser is its own
    # client address, so its failures do not lock the other tests' sign-ins out.
    page = new_context(extra_http_headers={"X-Forwarded-For": "198.51.100.23"}).new_page()
    email = fresh_email("limited")
    sign_up(page, deployment, email, "Limited Org")
    page.context.clear_cookies()
    for attempt in range(10):
        sign_in_attempt(page, deployment, email, f"wrong-password-{attempt}")
        expect(page.get_by_role("alert")).to_contain_text("Wrong email or password", ignore_case=True)
    response = sign_in_attempt(page, deployment, email, PASSWORD)  # the right one, too late
    assert response is not None and response.status == 429
    expect(page.get_by_role("alert")).to_contain_text("Too many", ignore_case=True)
    screenshot(page, "signin-rate-limited")
    assert page.get_by_role("button", name="Sign in").is_visible()  # not signed in


def sign_in_attempt(page: Page, deployment: Deployment, email: str, password: str) -> Response | None:
    page.goto(deployment.url + "/signin")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Sign in").click()
    return navigation.value
