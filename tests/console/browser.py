"""A browser for the console tests: an httpx client with cookies that reads each page's CSRF
token the way a browser submits it (the hidden ``csrf`` field of the page's forms)."""

from __future__ import annotations

import re
import secrets
from html import unescape
from urllib.parse import urlencode

import httpx

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
PASSWORD = "correct horse battery"


class Browser:
    def __init__(self, control: str) -> None:
        # Each browser is its own client address (as the data plane, a trusted proxy on
        # loopback, reports it), so limits per address do not leak between tests.
        address = "10." + ".".join(str(secrets.randbelow(250) + 1) for _ in range(3))
        self.http = httpx.Client(
            base_url=control, timeout=30, follow_redirects=False, headers={"X-Forwarded-For": address}
        )
        self.csrf = ""

    def get(self, path: str) -> httpx.Response:
        page = self.http.get(path)
        found = CSRF.search(page.text)
        if found:
            self.csrf = unescape(found.group(1))
        return page

    def post(
        self, path: str, fields: dict[str, str] | list[tuple[str, str]], *, csrf: bool = True
    ) -> httpx.Response:
        items = list(fields.items()) if isinstance(fields, dict) else list(fields)
        if csrf:
            items.append(("csrf", self.csrf))
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.http.post(path, content=urlencode(items), headers=form)

    def sign_up(self, organization: str | None = None) -> str:
        """A new organization and its owner, signed in; the email."""
        email = f"owner-{secrets.token_hex(4)}@example.com"
        self.get("/console/signup")
        answer = self.post(
            "/console/signup",
            {"email": email, "password": PASSWORD, "organization": organization or "Org " + email},
        )
        assert answer.status_code == 303, answer.text
        return email

    def available(self) -> int:
        """The big number of the overview page."""
        page = self.get("/console/overview")
        assert page.status_code == 200, page.text
        found = re.search(r'id="available"[^>]*>\s*(\d+)\s*<', page.text)
        assert found, page.text
        return int(found.group(1))

    def close(self) -> None:
        self.http.close()


def error_of(page: str, field: str) -> str | None:
    """The message shown next to ``field`` (the ``e-<field>`` element), if any."""
    found = re.search(rf'id="e-{field}"[^>]*>([^<]*)<', page)
    return unescape(found.group(1)) if found else None
