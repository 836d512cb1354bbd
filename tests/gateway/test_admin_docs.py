"""The admin API's schema and docs map the whole control surface: admin credential only."""

from __future__ import annotations

import re

import httpx

from tests.gateway.conftest import ADMIN_KEY, Gateway


def test_schema_and_docs_need_the_admin_key(gateway: Gateway) -> None:
    for path in ("/admin/openapi.json", "/admin/docs"):
        anonymous = httpx.get(gateway.control + path, timeout=5)
        assert anonymous.status_code == 401, path
        assert anonymous.json()["error"]["code"] == "invalid_admin_key"
        assert httpx.get(gateway.control + path, timeout=5,
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert httpx.get(gateway.control + path, timeout=5).status_code == 404, path
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    schema = httpx.get(gateway.control + "/admin/openapi.json", headers=admin, timeout=5)
    assert schema.status_code == 200 and "/admin/accounts" in schema.json()["paths"]
    page = httpx.get(gateway.control + "/admin/docs", headers=admin, timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="post-admin-packages"' in page.text and 'id="schema-PackageBody"' in page.text
    # Rendered here, from the running service: nothing fetched from elsewhere (Swagger UI came
    # from a CDN, a blank page on a network with no way out).
    linked = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert linked and all(url.startswith(("/", "#", "?")) for url in linked), linked
