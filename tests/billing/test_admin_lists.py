"""The admin's lists through a real gateway, on each ledger backend: ``GET /admin/accounts``
(search, newest first, pages by an opaque cursor; a crafted cursor is a 400, never a 500)
and ``GET /admin/accounts/{id}/keys`` (no secrets, 404 for an unknown account)."""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from .procs import Gateway, start_gateway, start_sim, stop_process, write_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def gateway(ledger_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from tests.redis_servers import redis_server

    tmp = tmp_path_factory.mktemp("lists")
    with redis_server() as server:
        sim, port = start_sim(tmp / "sim.log")
        gw = start_gateway(write_config(tmp / "models.yaml", port), server.url, ledger_url, tmp / "gw.log")
        try:
            yield gw
        finally:
            gw.stop()
            stop_process(sim)


def make_accounts(gw: Gateway, names: list[str]) -> list[dict[str, Any]]:
    """Accounts created a few milliseconds apart: newest first has no order within one ms."""
    made = []
    with gw.admin() as admin:
        for name in names:
            made.append(admin.post("/admin/accounts", json={"name": name}).raise_for_status().json())
            time.sleep(0.003)
    return made


def all_pages(gw: Gateway, **params: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    with gw.admin() as admin:
        while True:
            page = admin.get("/admin/accounts", params={**params, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            body = page.json()
            assert set(body) == {"data", "next_cursor"}
            seen += body["data"]
            cursor = body["next_cursor"]
            if cursor is None:
                return seen


def test_accounts_are_searched_and_paged_newest_first(gateway: Gateway) -> None:
    tag = secrets.token_hex(4)
    made = make_accounts(gateway, [f"Acme-{tag} {i}" for i in range(5)] + [f"other-{tag}"])
    # search: a case-insensitive substring of the name, newest first, over pages of 2
    found = all_pages(gateway, q=f"acme-{tag.upper()}", limit=2)
    assert [a["id"] for a in found] == [a["id"] for a in reversed(made[:5])]
    assert found[0] == made[4] and set(found[0]) == {"id", "name", "created_at"}
    # or the exact id (a substring of an id matches nothing)
    assert all_pages(gateway, q=made[5]["id"]) == [made[5]]
    assert all_pages(gateway, q=made[5]["id"][:-1]) == []
    # LIKE's wildcards are plain characters
    assert all_pages(gateway, q=f"%{tag}") == []
    assert all_pages(gateway, q="_") == [] or all("_" in a["name"] for a in all_pages(gateway, q="_"))
    # without q: every account once, the newest first
    everything = all_pages(gateway, limit=3)
    ids = [a["id"] for a in everything]
    assert len(ids) == len(set(ids)) and {a["id"] for a in made} <= set(ids)
    created = [a["created_at"] for a in everything]
    assert created == sorted(created, reverse=True)
    with gateway.admin() as admin:
        first = admin.get("/admin/accounts").json()
        assert len(first["data"]) <= 50


def _b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 at all!",
        _b64(b"{not json"),
        _b64(orjson.dumps({"offset": 1})),
        _b64(orjson.dumps([1])),
        _b64(orjson.dumps(["1700000000000", "acct_x"])),
        _b64(b'[1180591620717411303424, "acct_x"]'),
        _b64(orjson.dumps([2**63, "acct_x"])),
        _b64(b'[1e300, "acct_x"]'),
        _b64(orjson.dumps([-1, "acct_x"])),
        _b64(orjson.dumps([True, "acct_x"])),
        _b64(orjson.dumps([1700000000000, "acct\u0000x"])),
        _b64(orjson.dumps([1700000000000, "x" * 65])),
        _b64(b"\xff\xfe\x00"),
        "é",
    ],
)
def test_a_crafted_cursor_is_a_400(gateway: Gateway, cursor: str) -> None:
    with gateway.admin() as admin:
        answer = admin.get("/admin/accounts", params={"cursor": cursor})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "cursor"


def test_a_well_formed_foreign_cursor_pages_from_there(gateway: Gateway) -> None:
    cursor = _b64(orjson.dumps([0, "zzz"]))  # before every account: an empty last page
    with gateway.admin() as admin:
        answer = admin.get("/admin/accounts", params={"cursor": cursor}).json()
    assert answer == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"limit": 0}, 422),
        ({"limit": 501}, 422),
        ({"limit": "many"}, 422),
        ({"page": 2}, 400),
        ({"q": "x" * 201}, 422),
        ({"q": "a\u0000b"}, 400),
    ],
)
def test_bad_list_queries_are_refused(gateway: Gateway, params: dict[str, Any], status: int) -> None:
    with gateway.admin() as admin:
        answer = admin.get("/admin/accounts", params=params)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"


def test_limit_bounds_are_accepted(gateway: Gateway) -> None:
    make_accounts(gateway, ["a", "b"])
    with gateway.admin() as admin:
        one = admin.get("/admin/accounts", params={"limit": 1}).json()
        assert len(one["data"]) == 1 and one["next_cursor"]
        assert admin.get("/admin/accounts", params={"limit": 500}).status_code == 200


def test_an_accounts_keys_are_listed_without_secrets(gateway: Gateway) -> None:
    (account,) = make_accounts(gateway, ["keys"])
    with gateway.admin() as admin:
        url = f"/admin/accounts/{account['id']}/keys"
        assert admin.get(url).json() == {"data": []}
        first = admin.post(url, json={"name": "ci", "rpm": 60, "models": ["chat-model"]}).json()
        second = admin.post(url, json={"name": "batch"}).json()
        patched = admin.patch(f"/admin/keys/{second['id']}", json={"disabled": True}).json()
        listed = admin.get(url).json()["data"]
        assert listed == [{k: v for k, v in first.items() if k != "key"}, patched]
        assert all("key" not in k and "key_hash" not in k for k in listed)
        assert admin.delete(f"/admin/keys/{first['id']}").status_code == 204
        assert [k["id"] for k in admin.get(url).json()["data"]] == [second["id"]]
        unknown = admin.get("/admin/accounts/acct_nope/keys")
        assert unknown.status_code == 404 and "acct_nope" in unknown.json()["error"]["message"]
        assert admin.get("/admin/accounts/acct%00x/keys").status_code == 404
        assert admin.get(url, params={"all": 1}).status_code == 400
        assert admin.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert admin.get("/admin/accounts", headers={"Authorization": "Bearer wrong"}).status_code == 401
