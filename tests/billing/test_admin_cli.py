"""The admin CLI (``tokengate accounts | keys | packages | purchases | usage``) against a real
gateway and billing worker (SQLite ledger): every command, tables and ``--json``, and its
errors: one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from launcher.cli import main
from launcher.embedded import free_port

from .procs import (
    ADMIN_KEY,
    MODEL,
    Gateway,
    start_gateway,
    start_sim,
    start_worker,
    stop_process,
    write_config,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def gateway(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from tests.redis_servers import redis_server

    tmp = tmp_path_factory.mktemp("cli")
    with redis_server() as server:
        sim, port = start_sim(tmp / "sim.log")
        gw = start_gateway(write_config(tmp / "models.yaml", port), server.url, sqlite_url, tmp / "gw.log")
        worker = start_worker(server.url, sqlite_url, tmp / "worker.log")
        try:
            yield gw
        finally:
            stop_process(worker)
            gw.stop()
            stop_process(sim)


@pytest.fixture
def tg(gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``tg(*argv)``: (exit status, stdout, stderr) of ``tokengate *argv`` run in this process."""
    monkeypatch.setenv("TOKENGATE_CONTROL_URL", gateway.control)
    monkeypatch.setenv("TOKENGATE_ADMIN_KEY", ADMIN_KEY)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = main(list(argv))
        except SystemExit as exit_:
            status = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def tg_json(tg: Any, *argv: str) -> Any:
    status, out, err = tg(*argv, "--json")
    assert status == 0 and err == "", err
    return json.loads(out)


def tokengate(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``tokengate *argv`` as a user runs it (a subprocess)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TOKENGATE_")}
    return subprocess.run([sys.executable, "-m", "launcher.cli", *argv], env={**environ, **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_an_operator_runs_a_customer_from_the_cli(gateway: Gateway, tg: Any, tmp_path: Path) -> None:
    tag = secrets.token_hex(3)
    account = tg_json(tg, "accounts", "create", f"CLI Team {tag}")
    assert set(account) == {"id", "name", "created_at"}
    acct = account["id"]
    status, out, _ = tg("accounts", "create", f"cli other {tag}")
    assert status == 0 and out.split()[:3] == ["ID", "NAME", "CREATED"]

    package = tg_json(tg, "packages", "create", "--name", f"S {tag}", "--credits", "100000",
                      "--valid-days", "30", "--models", MODEL, "--id", f"pkg-{tag}")
    assert package["id"] == f"pkg-{tag}" and package["models"] == [MODEL]
    status, out, _ = tg("packages", "list")
    assert status == 0 and f"pkg-{tag}" in out and "100000" in out
    on_sale = tg_json(tg, "packages", "create", "--name", f"M {tag}", "--credits", "5000000",
                      "--valid-days", "90", "--price", "4900", "--currency", "usd", "--for-sale")
    assert on_sale["price"] == {"amount": 4900, "currency": "USD"} and on_sale["for_sale"] is True
    status, out, _ = tg("packages", "list")
    assert status == 0 and "4900 USD" in out
    status, _, err = tg("packages", "create", "--name", "x", "--credits", "1", "--valid-days", "1",
                        "--for-sale")
    assert status != 0 and "price" in err and "Traceback" not in err
    grant = tg_json(tg, "purchases", "create", acct, "--package", f"pkg-{tag}", "--order", f"o-{tag}")
    assert grant["credits"] == 100000 and grant["account_id"] == acct

    status, out, _ = tg("keys", "create", acct, "--name", "ci", "--rpm", "600", "--models", MODEL)
    assert status == 0 and "secret  tg-" in out
    key = tg_json(tg, "keys", "create", acct, "--name", "batch", "--tpm", "100000")
    assert key["key"].startswith("tg-") and key["tpm"] == 100000 and key["rpm"] is None

    # search and pages
    status, out, _ = tg("accounts", "list", "--q", f"cli TEAM {tag}")
    assert status == 0 and acct in out and f"cli other {tag}" not in out
    assert tg_json(tg, "accounts", "list", "--q", acct)["data"] == [account]
    first = tg_json(tg, "accounts", "list", "--q", tag, "--limit", "1")
    assert len(first["data"]) == 1 and first["next_cursor"]
    status, out, _ = tg("accounts", "list", "--q", tag, "--limit", "1")
    assert f"--cursor {first['next_cursor']}" in out
    second = tg_json(tg, "accounts", "list", "--q", tag, "--limit", "1", "--cursor", first["next_cursor"])
    assert second["data"] == [account] and second["next_cursor"] is None

    # keys: list, update
    listed = tg_json(tg, "keys", "list", acct)["data"]
    assert [k["name"] for k in listed] == ["ci", "batch"] and all("key" not in k for k in listed)
    status, out, _ = tg("keys", "list", acct)
    assert status == 0 and key["id"] in out and key["prefix"] in out and key["key"] not in out
    changed = tg_json(tg, "keys", "update", key["id"], "--rpm", "5", "--disable", "--models", MODEL)
    assert (changed["rpm"], changed["disabled"], changed["models"]) == (5, True, [MODEL])
    changed = tg_json(tg, "keys", "update", key["id"], "--no-rpm", "--enable", "--all-models")
    assert (changed["rpm"], changed["disabled"], changed["models"]) == (None, False, None)

    # one chat request, then its usage
    with openai.OpenAI(base_url=gateway.base + "/v1", api_key=key["key"], max_retries=0) as client:
        reply = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
        request_id = reply.headers["x-request-id"]
    deadline = time.monotonic() + 30
    while not (records := tg_json(tg, "usage", "show", acct)["data"]):
        assert time.monotonic() < deadline, "the worker recorded no usage"
        time.sleep(0.2)
    assert [r["request_id"] for r in records] == [request_id] and records[0]["key_id"] == key["id"]
    status, out, _ = tg("usage", "show", acct)
    assert status == 0 and request_id in out and "CHARGE" in out
    grouped = tg_json(tg, "usage", "show", acct, "--group-by", "model,key", "--from", "2020-01-01")
    assert grouped["data"][0]["model"] == MODEL and grouped["data"][0]["requests"] == 1
    status, out, _ = tg("usage", "show", acct, "--group-by", "day")
    assert status == 0 and out.split()[:2] == ["DAY", "REQUESTS"]
    status, out, _ = tg("accounts", "show", acct)
    assert status == 0 and "spent" in out and "pkg-" + tag in out
    shown = tg_json(tg, "accounts", "show", acct)
    assert shown["balance"]["spent"] == records[0]["charge"] > 0

    # the CSV export, to a file and to stdout
    status, _, err = tg("usage", "export", "--out", str(tmp_path / "usage.csv"))
    assert status == 0 and "usage records" in err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "usage.csv").read_text())))
    assert request_id in {r["request_id"] for r in rows}
    done = tokengate("usage", "export", TOKENGATE_CONTROL_URL=gateway.control, TOKENGATE_ADMIN_KEY=ADMIN_KEY)
    assert done.returncode == 0 and done.stdout.startswith("request_id,")
    assert request_id in done.stdout

    # revoke: the key gets 401 at once, and leaves the list
    status, out, _ = tg("keys", "revoke", key["id"])
    assert status == 0 and "revoked" in out
    revoked = openai.OpenAI(base_url=gateway.base + "/v1", api_key=key["key"], max_retries=0)
    with revoked, pytest.raises(openai.AuthenticationError):
        revoked.models.list()
    assert key["id"] not in [k["id"] for k in tg_json(tg, "keys", "list", acct)["data"]]


def _one_line_error(done: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert done.returncode == status, done
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokengate: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_errors_are_one_line_and_a_nonzero_exit(gateway: Gateway) -> None:
    env = {"TOKENGATE_CONTROL_URL": gateway.control, "TOKENGATE_ADMIN_KEY": ADMIN_KEY}
    _one_line_error(tokengate("accounts", "show", "acct_nope", **env), 1, "account acct_nope not found (404)")
    _one_line_error(tokengate("keys", "list", "acct_nope", **env), 1, "not found (404)")
    _one_line_error(tokengate("keys", "revoke", "key_nope", **env), 1, "key key_nope not found (404)")
    _one_line_error(tokengate("purchases", "create", "acct_nope", "--package", "p", "--order", "o", **env),
                    1, "(404)")
    _one_line_error(tokengate("accounts", "list", "--cursor", "garbage!", **env), 1, "cursor", "(400)")
    wrong = {**env, "TOKENGATE_ADMIN_KEY": "tg-admin-wrong"}
    _one_line_error(tokengate("accounts", "list", **wrong), 1, "admin key was refused (401)")
    _one_line_error(tokengate("accounts", "list", "--admin-key", "nope", **env), 1, "(401)")
    dead = f"http://127.0.0.1:{free_port()}"
    _one_line_error(tokengate("accounts", "list", "--url", dead, **env), 1,
                    f"cannot reach the admin API at {dead}", "connection refused")
    _one_line_error(tokengate("accounts", "list", TOKENGATE_CONTROL_URL=gateway.control), 2,
                    "TOKENGATE_ADMIN_KEY")
    _one_line_error(tokengate("accounts", "list", "--url", "ftp://x", **env), 2, "URL")
    _one_line_error(tokengate("keys", "update", "key_x", **env), 2, "nothing to change")
    _one_line_error(tokengate("keys", "create", "acct_x", **env), 2, "--name")
    _one_line_error(tokengate("keys", "update", "key_x", "--rpm", "0", **env), 2, "--rpm")
    _one_line_error(tokengate("keys", "update", "key_x", "--rpm", "5", "--no-rpm", **env), 2, "not allowed")
    _one_line_error(tokengate("usage", "show", "a", "--group-by", "week", **env), 2, "day, model, key")
    _one_line_error(tokengate("accounts", **env), 2)


def test_every_command_has_help() -> None:
    for argv in (["accounts"], ["accounts", "create"], ["accounts", "list"], ["accounts", "show"],
                 ["keys"], ["keys", "create"], ["keys", "list"], ["keys", "update"], ["keys", "revoke"],
                 ["packages"], ["packages", "create"], ["packages", "list"], ["purchases"],
                 ["purchases", "create"], ["usage"], ["usage", "show"], ["usage", "export"]):
        with pytest.raises(SystemExit) as done:
            main([*argv, "--help"])
        assert done.value.code == 0
