"""Organization members: owners add and remove teammates; members only look; a removed
member is out at once; an organization keeps an owner."""

from __future__ import annotations

import re
import secrets

import pytest

from .browser import PASSWORD, Browser, error_of
from .conftest import Console

pytestmark = pytest.mark.timeout(120)


def _sign_in(console: Console, email: str, password: str = PASSWORD) -> Browser:
    teammate = console.browser()
    teammate.get("/console/signin")
    assert teammate.post("/console/signin", {"email": email, "password": password}).status_code == 303
    return teammate


def _member_id(page: str, email: str) -> str:
    row = re.search(rf"<td>{re.escape(email)}</td>.*?/console/members/(usr_\w+)/remove", page, re.S)
    assert row, page
    return row.group(1)


def test_an_owner_adds_a_member_who_sees_the_organization_but_cannot_manage_it(
    console: Console, browser: Browser
) -> None:
    email = f"mate-{secrets.token_hex(4)}@example.com"
    browser.get("/console/members")
    added = browser.post("/console/members", {"email": email, "password": "first password", "role": "member"})
    assert added.status_code == 200 and f"{email} can sign in now." in added.text
    member = _sign_in(console, email, "first password")
    try:
        assert member.available() == browser.available()  # the same organization
        page = member.get("/console/members")
        assert page.status_code == 200 and "Add member" not in page.text and email in page.text
        refused = member.post("/console/members", {"email": "x@example.com", "password": "long enough"})
        assert refused.status_code == 403
        owner_id = re.findall(r"/console/members/(usr_\w+)/remove", browser.get("/console/members").text)
        assert owner_id  # the owner sees the member's Remove button
        assert member.get("/console/admin").status_code == 403
        removed = browser.post(
            f"/console/members/{_member_id(browser.get('/console/members').text, email)}/remove", {}
        )
        assert removed.status_code == 303
        assert member.get("/console/overview").status_code == 403  # out at once
    finally:
        member.close()


def test_member_forms_show_their_errors_next_to_the_fields(browser: Browser) -> None:
    browser.get("/console/members")
    short = browser.post(
        "/console/members", {"email": "mate@example.com", "password": "short", "role": "member"}
    )
    assert short.status_code == 400 and error_of(short.text, "password")
    bad = browser.post("/console/members", {"email": "not an email", "password": "long enough pw"})
    assert bad.status_code == 400 and error_of(bad.text, "email")
    role = browser.post(
        "/console/members", {"email": "m@example.com", "password": "long enough pw", "role": "admin"}
    )
    assert role.status_code == 400 and error_of(role.text, "role")
    unknown = browser.post("/console/members/usr_nobody/remove", {})
    assert unknown.status_code == 404
    assert (
        browser.post("/console/members", {"email": "a@b.org", "password": "x" * 10}, csrf=False).status_code
        == 403
    )
