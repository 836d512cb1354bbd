"""The tokengate command as an operator meets it: a bad catalog, the quickstart."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from gateway.catalog import load_catalog

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("context_window: 32768", "context_window: big"), "context_window"),
        (("tokenizer: tiktoken:cl100k_base", "tokenizer: tiktoken:nope_base"), "tokenizer"),
        (("tokenizer: tiktoken:cl100k_base", "tokenizer: hf:/nonexistent/dir"), "tokenizer"),
    ],
)
def test_serve_refuses_a_bad_catalog_naming_field_and_line(
    tmp_path: Path, change: tuple[str, str], field: str
) -> None:
    bad = tmp_path / "models.yaml"
    text = (ROOT / "models.yaml").read_text()
    assert change[0] in text
    bad.write_text(text.replace(*change, 1))
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "serve", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert re.search(rf"models\.yaml:\d+: models\.0\.{field}: ", done.stderr), done.stderr
    assert "Traceback" not in done.stderr


def test_quickstart_serves_the_printed_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["TOKENGATE_ADMIN_KEY"] = "tg-admin-quickstart-test"
    process = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "quickstart", "--port", "0", "--data-dir",
         str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        output = ""
        deadline = time.monotonic() + 60
        while "Press Ctrl+C" not in output:
            assert time.monotonic() < deadline and process.poll() is None, output
            output += process.stdout.readline()
        base = re.search(r"base URL\s+(http://\S+/v1)", output)
        key = re.search(r"API key\s+(tg-\S+)", output)
        assert base and key and "tg-admin-quickstart-test" in output
        with openai.OpenAI(base_url=base.group(1), api_key=key.group(1), max_retries=0) as client:
            models = [m.id for m in client.models.list().data]
            reply = client.chat.completions.create(
                model=models[0], messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
            assert reply.choices[0].message.content and reply.usage is not None
            # The printed snippet sends no max_tokens: the gateway grants up to the model's
            # context window, which the quickstart's simulators must accept.
            catalog = load_catalog(ROOT / "models.yaml")
            for model in [m for m in models if catalog.models[m].kind == "chat"]:
                reply = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Hello!"}])
                assert reply.choices[0].message.content
        # The admin API answers at the printed control-plane URL, never at the public port.
        control = re.search(r"admin API\s+(http://\S+)", output)
        assert control, output
        admin = {"Authorization": "Bearer tg-admin-quickstart-test"}
        public = base.group(1).removesuffix("/v1")
        accounts = httpx.get(control.group(1) + "/admin/accounts", headers=admin, timeout=10)
        assert accounts.status_code == 200 and accounts.json()["data"][0]["name"] == "demo"
        assert httpx.get(public + "/admin/accounts", headers=admin, timeout=10).status_code == 404
        me = httpx.get(base.group(1) + "/me", headers={"Authorization": f"Bearer {key.group(1)}"}, timeout=10)
        assert me.status_code == 200 and me.json()["account"]["name"] == "demo"
        offers = httpx.get(base.group(1) + "/packages", timeout=10).json()["data"]  # no key
        assert [(p["id"], p["price"]) for p in offers] == [("starter", {"amount": 4900, "currency": "CNY"})]
        listed = subprocess.run(
            [sys.executable, "-m", "launcher.cli", "accounts", "list"], cwd=ROOT, capture_output=True,
            text=True, timeout=60, env={**env, "TOKENGATE_CONTROL_URL": control.group(1)}, check=False)
        assert listed.returncode == 0 and "demo" in listed.stdout, listed.stderr
        # The console's URL and the demo account owner's sign-in, printed, work.
        console = re.search(r"console\s+(http://\S+/console)\n", output)
        sign_in = re.search(r"sign in\s+(\S+@\S+) / (\S+)", output)
        assert console and sign_in and console.group(1) == control.group(1) + "/console", output
        _sign_in_to_console(console.group(1), sign_in.group(1), sign_in.group(2))
        children = _children(process.pid)
        assert len(children) >= 4  # Redis, the simulators, the billing worker, the control plane
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stdout:
            process.stdout.close()
    time.sleep(0.5)
    assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == []


def _sign_in_to_console(console: str, email: str, password: str) -> None:
    """Sign in over HTTP as a browser does (the form's CSRF token), then open the console."""
    with httpx.Client(base_url=console.removesuffix("/console"), timeout=10) as browser:
        form = browser.get("/console/signin")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert form.status_code == 200 and token, form.text
        wrong = browser.post(
            "/console/signin", data={"csrf": token.group(1), "email": email, "password": password + "x"}
        )
        assert wrong.status_code == 400 and "tg_session" not in browser.cookies
        signed = browser.post(
            "/console/signin", data={"csrf": token.group(1), "email": email, "password": password}
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/console", signed.text
        assert browser.cookies.get("tg_session")
        home = browser.get("/console")  # a session: to the organization's pages, not to sign-in
        assert home.status_code == 303 and home.headers["location"] == "/console/overview"
        overview = browser.get("/console/overview")
        assert overview.status_code == 200 and "demo" in overview.text


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


BRIDGED_CATALOG = """\
clusters:
  - name: local
    endpoints: [{url: "http://127.0.0.1:9001"}]
  - name: anthropic
    kind: litellm
    provider: anthropic
    api_key_env: TG_QS_ANTHROPIC_KEY
    api_base: %s
    endpoints: [{url: "http://127.0.0.1:9100"}]
  - name: gemini
    kind: litellm
    provider: gemini
    api_key_env: TG_QS_GEMINI_KEY
    endpoints: [{url: "http://127.0.0.1:9101"}]
models:
  - name: local-chat
    context_window: 4096
    price: {input: 1, output: 2}
    deployments: [local]
  - name: claude
    served_name: claude-standin-1
    context_window: 200000
    price: {input: 3, output: 15}
    deployments: [anthropic]
  - name: gemini-flash
    context_window: 100000
    price: {input: 1, output: 1}
    deployments: [gemini, local]
    prefer: [gemini]
  - name: gemini-only
    context_window: 100000
    price: {input: 1, output: 1}
    deployments: [gemini]
"""


def test_quickstart_bridges_the_providers_it_has_a_key_for(tmp_path: Path) -> None:
    from tests.support.anthropic_standin import API_KEY, start_anthropic_standin

    standin = start_anthropic_standin()
    config = tmp_path / "models.yaml"
    config.write_text(BRIDGED_CATALOG % standin.url)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "TG_QS_GEMINI_KEY")}
    env["TG_QS_ANTHROPIC_KEY"] = API_KEY
    process = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "quickstart", "--port", "0", "--config", str(config),
         "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        output = ""
        deadline = time.monotonic() + 120  # litellm takes seconds to import in the bridge
        while "Press Ctrl+C" not in output:
            assert time.monotonic() < deadline and process.poll() is None, output
            output += process.stdout.readline()
        assert "cluster 'gemini' left out: $TG_QS_GEMINI_KEY" in output
        assert "models left out with it: gemini-only" in output
        base = re.search(r"base URL\s+(http://\S+/v1)", output)
        key = re.search(r"API key\s+(tg-\S+)", output)
        assert base and key, output
        with openai.OpenAI(base_url=base.group(1), api_key=key.group(1), max_retries=0) as client:
            assert sorted(m.id for m in client.models.list().data) == ["claude", "gemini-flash", "local-chat"]
            reply = client.chat.completions.create(
                model="claude", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
        assert reply.choices[0].message.content == " Hello from the stand-in."
        assert standin.last().api_key == API_KEY
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stdout:
            process.stdout.close()
        standin.stop()
