"""Two planes: the admin API answers at the control plane's URL and nowhere on the public
port; self-service answers at the public base URL as before (forwarded to the control plane)."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.gateway.conftest import ADMIN_KEY, Gateway
from tests.support.processes import (
    environment,
    free_port,
    spawn,
    start_control,
    stop_process,
    tokengate,
    wait_ready,
)

# Every admin route of shared/DESIGN.md that exists so far, with an id that does not.
ADMIN_ROUTES = [
    ("POST", "/admin/accounts"), ("GET", "/admin/accounts"), ("GET", "/admin/accounts/acct_x"),
    ("GET", "/admin/accounts/acct_x/keys"), ("POST", "/admin/accounts/acct_x/keys"),
    ("PATCH", "/admin/keys/key_x"), ("DELETE", "/admin/keys/key_x"), ("POST", "/admin/packages"),
    ("GET", "/admin/packages"), ("POST", "/admin/accounts/acct_x/purchases"),
    ("GET", "/admin/accounts/acct_x/usage"), ("GET", "/admin/usage/export?format=csv"),
    ("GET", "/admin/endpoints"), ("POST", "/admin/config/reload"), ("GET", "/admin/openapi.json"),
    ("GET", "/admin/docs"),
]


def test_admin_routes_answer_only_at_the_control_plane(gateway: Gateway) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(timeout=10, headers=admin) as client:
        for method, path in ADMIN_ROUTES:
            public = client.request(method, gateway.base + path, json={})
            assert public.status_code == 404, (method, path, public.text)
            assert public.json()["error"]["code"] == "unknown_url"
            control = client.request(method, gateway.control + path, json={})
            # 404 here would be an unknown id; the route itself is what matters
            assert control.status_code != 404 or "no " in control.json()["error"]["message"], (method, path)
            assert control.status_code not in (401, 405), (method, path, control.text)


def test_self_service_answers_at_the_public_url_as_at_the_control_plane(gateway: Gateway) -> None:
    account_id, key = gateway.new_account(credits=0)
    with gateway.admin() as admin:
        package = admin.post("/admin/packages", json={"name": "p", "credits": 500, "valid_days": 30})
        purchase = admin.post(f"/admin/accounts/{account_id}/purchases",
                              json={"package_id": package.raise_for_status().json()["id"], "order_id": "o1"})
        purchase.raise_for_status()
    headers = {"Authorization": f"Bearer {key}"}
    public = httpx.get(gateway.base + "/v1/me", headers=headers, timeout=10)
    assert public.status_code == 200, public.text
    assert public.headers["x-request-id"].startswith("req_")
    assert public.json() == httpx.get(gateway.control + "/v1/me", headers=headers, timeout=10).json()
    assert public.json()["account"]["id"] == account_id
    assert public.json()["balance"]["purchased"] == 500
    usage = httpx.get(gateway.base + "/v1/me/usage", params={"group_by": "day"}, headers=headers, timeout=10)
    assert usage.status_code == 200 and usage.json()["data"] == []
    refused = httpx.get(gateway.base + "/v1/me", headers={"Authorization": "Bearer tg-nope"}, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    unknown = httpx.get(gateway.base + "/v1/me/nothing", headers=headers, timeout=10)
    assert unknown.status_code == 404


@pytest.mark.parametrize(("control_url", "code"), [(None, "control_plane_unconfigured"),
                                                    ("closed", "control_plane_unavailable")])
def test_self_service_without_a_control_plane_is_a_clear_503(
        gateway: Gateway, tmp_path: Path, control_url: str | None, code: str) -> None:
    port = free_port()
    log = tmp_path / "lonely.log"
    env = environment(gateway.redis_url, gateway.database_url)
    if control_url == "closed":
        env["TOKENGATE_CONTROL_URL"] = f"http://127.0.0.1:{free_port()}"
    process = spawn(tokengate("serve", "--config", str(gateway.config), "--port", str(port)), log, env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log, "gateway")
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/me", timeout=10,
                           headers={"Authorization": "Bearer tg-x"})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == code
        if control_url is None:
            assert "TOKENGATE_CONTROL_URL" in answer.json()["error"]["message"]
    finally:
        stop_process(process)


def test_two_control_plane_replicas_serve_the_same_state(gateway: Gateway, tmp_path: Path) -> None:
    """The control plane keeps nothing of its own: what one replica did, the other sees and
    the data plane enforces (a key created on one, revoked on the other, stops at once)."""
    env = environment(gateway.redis_url, gateway.database_url)
    replica, url = start_control(gateway.config, env, tmp_path / "replica.log")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        with httpx.Client(headers=admin, timeout=10) as client:
            account = client.post(gateway.control + "/admin/accounts", json={"name": "replicated"}).json()
            assert client.get(f"{url}/admin/accounts/{account['id']}").json()["name"] == "replicated"
            key = client.post(f"{url}/admin/accounts/{account['id']}/keys", json={"name": "k"}).json()
            listed = client.get(f"{gateway.control}/admin/accounts/{account['id']}/keys").json()["data"]
            assert [k["id"] for k in listed] == [key["id"]]
            me = httpx.get(gateway.base + "/v1/me", timeout=10,
                           headers={"Authorization": f"Bearer {key['key']}"})
            assert me.status_code == 200 and me.json()["key"]["id"] == key["id"]
            assert client.delete(f"{gateway.control}/admin/keys/{key['id']}").status_code == 204
            revoked = gateway.openai(key["key"], max_retries=0)
            with revoked, pytest.raises(openai.AuthenticationError):
                revoked.models.list()
            assert client.get(f"{url}/admin/accounts/{account['id']}/keys").json()["data"] == []
    finally:
        stop_process(replica)
