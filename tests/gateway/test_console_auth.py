"""Signing up, in and out of the console over HTTP, as a browser does (cookies, forms)."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Gateway

from .conftest import start_gateway

pytestmark = pytest.mark.timeout(120)


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def _browser(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.control, timeout=30)


def _sign_up(browser: httpx.Client, email: str, password: str = "correct horse battery") -> httpx.Response:
    token = _csrf(browser.get("/console/signup"))
    return browser.post(
        "/console/signup",
        data={"csrf": token, "email": email, "password": password, "organization": "Lab " + email},
    )


def _email() -> str:
    return f"u-{secrets.token_hex(4)}@example.org"


def test_sign_up_then_out_then_in(gateway: Gateway) -> None:
    email = _email()
    with _browser(gateway) as browser:
        page = browser.get("/console/signup")
        assert (
            page.status_code == 200
            and 'for="f-email">Email<' in page.text
            and ">Sign up</button>" in page.text
        )
        assert "default-src 'self'" in page.headers["content-security-policy"]
        done = _sign_up(browser, email)
        assert done.status_code == 303 and done.headers["location"] == "/console"
        cookie = done.headers["set-cookie"].lower()
        assert (
            "tg_session=" in cookie
            and "httponly" in cookie
            and "samesite=lax" in cookie
            and "path=/console" in cookie
        )
        home = browser.get("/console/signin")  # signed in: straight on
        assert home.status_code == 303
        signout_token = _csrf(browser.get("/console/signup"))  # any page of the session carries it
        assert signout_token
    with _browser(gateway) as browser:
        token = _csrf(browser.get("/console/signin"))
        wrong = browser.post("/console/signin", data={"csrf": token, "email": email, "password": "nope nope"})
        assert wrong.status_code == 400 and "Wrong email or password." in wrong.text
        right = browser.post(
            "/console/signin",
            data={
                "csrf": token,
                "email": email.upper(),
                "password": "correct horse battery",
                "next": "/console/keys",
            },
        )
        assert right.status_code == 303 and right.headers["location"] == "/console/keys"


def test_sign_up_errors_are_shown_next_to_their_fields(gateway: Gateway) -> None:
    with _browser(gateway) as browser:
        taken = _email()
        assert _sign_up(browser, taken).status_code == 303
    with _browser(gateway) as browser:
        again = _sign_up(browser, taken)
        assert again.status_code == 400 and 'id="e-email"' in again.text and "sign in instead" in again.text
        short = _sign_up(browser, _email(), password="short")
        assert short.status_code == 400 and 'id="e-password"' in short.text


def test_forms_without_their_csrf_token_are_refused(gateway: Gateway) -> None:
    with _browser(gateway) as browser:
        browser.get("/console/signup")
        forged = browser.post(
            "/console/signup",
            data={"email": _email(), "password": "correct horse battery", "organization": "x"},
        )
        assert forged.status_code == 403
        wrong = browser.post(
            "/console/signin", data={"csrf": "not-the-token", "email": "a@b.org", "password": "x"}
        )
        assert wrong.status_code == 403


def test_sign_in_is_rate_limited_per_email(gateway: Gateway) -> None:
    email = _email()
    with _browser(gateway) as browser:
        assert _sign_up(browser, email).status_code == 303
    with _browser(gateway) as browser:
        token = _csrf(browser.get("/console/signin"))
        for _ in range(10):
            wrong = browser.post(
                "/console/signin", data={"csrf": token, "email": email, "password": "wrong pass"}
            )
            assert wrong.status_code == 400
        limited = browser.post(
            "/console/signin", data={"csrf": token, "email": email, "password": "correct horse battery"}
        )
        assert limited.status_code == 429 and "Too many failed sign-ins" in limited.text
        assert int(limited.headers["retry-after"]) > 0


def test_after_sign_in_only_console_paths_are_followed(gateway: Gateway) -> None:
    email = _email()
    with _browser(gateway) as browser:
        assert _sign_up(browser, email).status_code == 303
    with _browser(gateway) as browser:
        token = _csrf(browser.get("/console/signin"))
        for target in ("//evil.example/", "https://evil.example/console", "/console\\@evil", "javascript:x"):
            answer = browser.post(
                "/console/signin",
                data={"csrf": token, "email": email, "password": "correct horse battery", "next": target},
            )
            assert answer.headers["location"] == "/console", target


def test_the_console_speaks_chinese_when_asked(gateway: Gateway) -> None:
    with _browser(gateway) as browser:
        page = browser.get("/console/signup", headers={"accept-language": "zh-CN,zh;q=0.9"})
        assert ">邮箱<" in page.text and 'lang="zh-CN"' in page.text
        english = browser.get("/console/signup?lang=en", headers={"accept-language": "zh-CN"})
        assert ">Email<" in english.text and "tg_lang=en" in english.headers["set-cookie"]
        assert ">Email<" in browser.get("/console/signup", headers={"accept-language": "zh-CN"}).text


def test_a_body_that_is_no_form_of_ours_is_a_400_page(gateway: Gateway) -> None:
    with _browser(gateway) as browser:
        token = _csrf(browser.get("/console/signin"))
        fields = {f"f{i}": "x" for i in range(150)} | {"csrf": token}
        answer = browser.post("/console/signin", data=fields)
        assert answer.status_code == 400 and "could not be read" in answer.text
        binary = browser.post(
            "/console/signup",
            content=b"\xff\xfe\x00" * 100,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert binary.status_code == 403  # no CSRF token in it


def test_sign_ups_are_limited_per_address(gateway: Gateway, tmp_path: Path) -> None:
    """Each sign-up gets the trial: one address makes TOKENGATE_SIGNUPS_PER_HOUR of them an hour."""
    strict = start_gateway(
        gateway.config, gateway.redis_url, tmp_path / "gateway.log", TOKENGATE_SIGNUPS_PER_HOUR="3"
    )
    address = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
    try:
        answers = []
        for _ in range(4):
            with httpx.Client(
                base_url=strict.control, timeout=30, headers={"X-Forwarded-For": address}
            ) as browser:
                answers.append(_sign_up(browser, _email()))
        assert [a.status_code for a in answers] == [303, 303, 303, 429]
        assert "Too many sign-ups" in answers[-1].text and int(answers[-1].headers["retry-after"]) > 0
        other = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
        with httpx.Client(base_url=strict.control, timeout=30, headers={"X-Forwarded-For": other}) as browser:
            assert _sign_up(browser, _email()).status_code == 303  # another address: its own count
    finally:
        strict.stop()
