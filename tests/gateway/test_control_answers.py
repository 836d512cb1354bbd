"""The control plane answers what its OpenAPI schema says (bugs schemathesis found, tests/schema):
numbers it cannot store are refused with a 422, not a 500; a whole number written 5.0 is the
integer the schema allows; a 405 names every method of the path; errors are documented in
the shape they are sent."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import ADMIN_KEY, Gateway

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TOO_BIG = 2**91  # beyond BIGINT, and beyond what Redis's Lua counts exactly


@pytest.mark.parametrize("field", ["rpm", "tpm", "max_concurrency"])
def test_key_limits_beyond_what_the_ledger_stores_are_422(gateway: Gateway, field: str) -> None:
    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "t"}).json()["id"]
        made = admin.post(f"/admin/accounts/{account}/keys", json={"name": "k", field: TOO_BIG})
        assert made.status_code == 422, made.text
        assert made.json()["error"]["param"] == field
        assert admin.get(f"/admin/accounts/{account}/keys").json()["data"] == []
        key_id = admin.post(f"/admin/accounts/{account}/keys", json={"name": "k"}).json()["id"]
        changed = admin.patch(f"/admin/keys/{key_id}", json={field: TOO_BIG})
        assert changed.status_code == 422, changed.text
        assert admin.patch(f"/admin/keys/{key_id}", json={field: 2**50}).json()[field] == 2**50


def test_a_list_price_beyond_what_the_ledger_stores_is_422(gateway: Gateway) -> None:
    with gateway.admin() as admin:
        made = admin.post("/admin/packages", json={"name": "p", "credits": 1, "valid_days": 1,
                                                   "list_price": TOO_BIG})
    assert made.status_code == 422, made.text
    assert made.json()["error"]["param"] == "list_price"


def test_whole_numbers_written_with_a_fraction_are_integers(gateway: Gateway) -> None:
    account, _ = gateway.new_account(0)
    with gateway.admin() as admin:
        key = admin.post(f"/admin/accounts/{account}/keys",
                         json={"name": "k", "rpm": 30.0, "credit_limit": {"credits": 500.0, "period": "day"}})
        assert key.status_code == 201, key.text
        assert key.json()["rpm"] == 30 and key.json()["credit_limit"]["credits"] == 500
        for refused in ({"rpm": 30.5}, {"rpm": "30"}, {"rpm": True}):
            answer = admin.post(f"/admin/accounts/{account}/keys", json={"name": "k", **refused})
            assert answer.status_code == 422, (refused, answer.text)


def test_a_wrong_method_is_told_every_method_of_the_path(gateway: Gateway) -> None:
    answer = httpx.request("OPTIONS", gateway.control + "/admin/accounts", headers=ADMIN, timeout=5)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, POST"
    assert answer.json()["error"]["type"] == "invalid_request_error"
    key = httpx.put(gateway.control + "/admin/keys/key_nothing", headers=ADMIN, timeout=5)
    assert key.status_code == 405 and key.headers["allow"] == "DELETE, PATCH"


def test_the_schema_documents_errors_as_they_are_sent(gateway: Gateway) -> None:
    schema = httpx.get(gateway.control + "/admin/openapi.json", headers=ADMIN, timeout=5).json()
    account = schema["paths"]["/admin/accounts/{account_id}"]["get"]
    for status in ("401", "404", "422", "503"):
        assert account["responses"][status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"}, status
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's 422 body: never sent
    assert account["security"] == [{"adminKey": []}]
    assert schema["paths"]["/v1/me"]["get"]["security"] == [{"apiKey": []}]
    assert "security" not in schema["paths"]["/v1/packages"]["get"]
    export = schema["paths"]["/admin/usage/export"]["get"]["responses"]["200"]["content"]
    assert list(export) == ["text/csv"]
    assert set(schema["paths"]["/admin/packages"]["post"]["responses"]) >= {"200", "201", "409"}


def test_every_string_a_body_takes_refuses_nul_in_the_schema(gateway: Gateway) -> None:
    """PostgreSQL's text holds no NUL: each string field refuses one (422), and says so."""
    schema = httpx.get(gateway.control + "/admin/openapi.json", headers=ADMIN, timeout=5).json()
    bodies = [op["requestBody"]["content"]["application/json"]["schema"]
              for path in schema["paths"].values() for op in path.values() if "requestBody" in op]
    strings = list(_string_schemas(bodies, schema["components"]["schemas"], set()))
    assert len(strings) > 10
    for where, string in strings:
        if "enum" not in string:
            assert "pattern" in string and not re.search(string["pattern"], "a\x00"), where


def _string_schemas(nodes: list[Any], components: dict[str, Any], seen: set[str],
                    where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``type: string`` schema under ``nodes``, $refs followed (each once)."""
    for node in nodes:
        if not isinstance(node, dict):
            continue
        ref = node.get("$ref", "").rsplit("/", 1)[-1]
        if ref and ref not in seen:
            seen.add(ref)
            yield from _string_schemas([components[ref]], components, seen, ref)
        if node.get("type") == "string":
            yield where, node
        children = [*node.get("properties", {}).values(), *node.get("anyOf", []), node.get("items")]
        yield from _string_schemas(children, components, seen, where)
