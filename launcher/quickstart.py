"""``tokengate quickstart``: the whole gateway on embedded defaults, in one command.

It starts its own redis-server (AOF, fsync always) unless ``REDIS_URL`` is set, one vLLM
simulator per cluster of models.yaml (each serving the models deployed there), a bridge per
cluster of kind litellm whose provider key is in the environment (``tokengate bridge``: the
real provider is called; a cluster without its key is left out, with its models), the billing
worker, the control plane (admin API, self-service ledger), the data plane (the OpenAI
API, in this process), and a demo account created in the ledger (SQLite in the data
directory unless ``DATABASE_URL`` is set) and funded by buying the starter package, with an
owner who signs in to the web console; then prints how to call it and where to sign in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
import yaml
from pydantic import SecretStr

from billing.db import migrate
from billing.errors import Conflict
from billing.packages import NewPackage
from billing.service import Billing
from billing.users import check_password
from gateway.accounts import KeyLimits
from gateway.app import create_app
from gateway.catalog import parse_catalog
from gateway.contract import BadRequest
from gateway.server import GatewayHttpProtocol
from gateway.settings import Settings
from gateway.state import connect_redis
from launcher.embedded import (
    free_port,
    free_ports,
    start_bridge,
    start_redis,
    start_simulators,
    stop,
    wait_for_port,
)

STARTER_CREDITS = 1_000_000
STARTER = NewPackage(id="starter", name="Starter", credits=STARTER_CREDITS, valid_days=365,
                     price={"amount": 4900, "currency": "CNY"}, for_sale=True)
TRIAL = NewPackage(id="trial", name="Trial", credits=100_000, valid_days=14, trial=True)
DEMO_EMAIL = "demo@tokengate.local"  # the demo account's owner in the console


def simulated_config(config_text: str, ports: dict[str, int]) -> tuple[str, list[tuple[int, list[str]]]]:
    """models.yaml with each cluster's endpoints replaced by one local server on its port: a
    simulator (listed with the names it serves), or for a cluster of kind litellm its bridge."""
    doc: dict[str, Any] = yaml.safe_load(config_text)
    bridged = {c["name"] for c in doc["clusters"] if c.get("kind") == "litellm"}
    served: dict[str, list[str]] = {c["name"]: [] for c in doc["clusters"] if c["name"] not in bridged}
    for model in doc["models"]:
        for cluster in model["deployments"]:
            if cluster not in bridged:
                served[cluster].append(model.get("served_name") or model["name"])
    for cluster in doc["clusters"]:
        cluster["endpoints"] = [{"url": f"http://127.0.0.1:{ports[cluster['name']]}"}]
    servers = [(ports[name], names) for name, names in served.items() if names]
    return yaml.safe_dump(doc, sort_keys=False), servers


def without_unkeyed_bridges(config_text: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """models.yaml without the clusters of kind litellm whose provider key ``env`` lacks (and
    without the models left with no deployment); a note for each left out."""
    doc: dict[str, Any] = yaml.safe_load(config_text)
    unkeyed = {c["name"]: c["api_key_env"] for c in doc["clusters"]
               if c.get("kind") == "litellm" and c.get("api_key_env") and not env.get(c["api_key_env"])}
    if not unkeyed:
        return config_text, []
    doc["clusters"] = [c for c in doc["clusters"] if c["name"] not in unkeyed]
    notes = [f"cluster {name!r} left out: ${variable} (its provider key) is not set"
             for name, variable in unkeyed.items()]
    regions = {c["name"]: c.get("region", "") for c in doc["clusters"]}
    for model in doc["models"]:
        model["deployments"] = [d for d in model["deployments"] if d not in unkeyed]
        places = {*model["deployments"], *(regions[d] for d in model["deployments"])}
        model["prefer"] = [p for p in model.get("prefer", []) if p in places]
    dropped = [m["name"] for m in doc["models"] if not m["deployments"]]
    if dropped:
        notes.append(f"models left out with it: {', '.join(dropped)}")
    doc["models"] = [m for m in doc["models"] if m["deployments"]]
    return yaml.safe_dump(doc, sort_keys=False), notes


def demo_password(data: Path) -> str:
    """The demo console user's password: ``TOKENGATE_DEMO_PASSWORD``, else one generated on the
    first run and kept in the data directory (a rerun prints the same one)."""
    if os.environ.get("TOKENGATE_DEMO_PASSWORD"):
        try:
            check_password(os.environ["TOKENGATE_DEMO_PASSWORD"])
        except BadRequest as error:
            raise RuntimeError(f"TOKENGATE_DEMO_PASSWORD: {error.message}") from None
        return os.environ["TOKENGATE_DEMO_PASSWORD"]
    kept = data / "demo-password"
    if kept.is_file():
        return kept.read_text(encoding="utf-8").strip()
    password = secrets.token_urlsafe(12)
    kept.touch(mode=0o600)
    kept.write_text(password + "\n", encoding="utf-8")
    return password


async def _demo_key(redis_url: str, database_url: str, password: str) -> tuple[str, str]:
    """A demo account in the ledger, funded by buying the starter package, its key, and its
    owner in the console (``DEMO_EMAIL`` with ``password``; kept when a rerun finds it)."""
    redis = connect_redis(redis_url)
    billing = Billing.build(database_url, redis)
    try:
        await migrate.upgrade(billing.engine)
        for package in (STARTER, TRIAL):
            with contextlib.suppress(Conflict):  # an operator changed it (or has a trial): keep theirs
                await billing.packages.create_package(package)
        account = await billing.accounts.create_account("demo")
        await billing.packages.purchase(account["id"], "starter", f"quickstart-{account['id']}")
        key = await billing.accounts.create_key(account["id"], "quickstart", KeyLimits())
        with contextlib.suppress(Conflict):  # a rerun on the same ledger: that user stays
            await billing.users.invite_member(account["id"], DEMO_EMAIL, password, role="owner")
        return account["id"], key["key"]
    finally:
        await billing.close()
        await redis.aclose()


def start_billing_worker(redis_url: str, database_url: str, log: Path) -> subprocess.Popen[bytes]:
    """``tokengate billing worker`` as a child: it records usage in the ledger."""
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url}
    args = [sys.executable, "-m", "launcher.cli", "billing", "worker"]
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def start_control_plane(settings: Settings, host: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``tokengate control`` as a child: the admin API and the ledger behind self-service."""
    env = {**os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
           "TOKENGATE_CONFIG": settings.config_path,
           "TOKENGATE_ADMIN_KEY": settings.admin_key.get_secret_value() if settings.admin_key else "",
           # Orders are paid on the control plane's test page: no money moves (docs/billing.md).
           "TOKENGATE_PAYMENT_PROVIDER": os.environ.get("TOKENGATE_PAYMENT_PROVIDER", "test"),
           "TOKENGATE_DATA_URL": settings.data_url or ""}  # the console's snippets and playground
    args = [sys.executable, "-m", "launcher.cli", "control", "--host", host, "--port", str(port)]
    with log.open("ab") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port, process, timeout=60)
    return process


def _banner(base: str, control: str, admin_key: str, key: str, model: str, redis_url: str,
            database_url: str, password: str) -> str:
    return f"""
tokengate is running.

  base URL   {base}
  API key    {key}   (demo account, {STARTER_CREDITS:,} credits)
  admin API  {control}
  admin key  {admin_key}
  console    {control}/console
  sign in    {DEMO_EMAIL} / {password}   (the demo account's owner)
  Redis      {redis_url}
  ledger     {database_url}

Python (pip install openai):

  from openai import OpenAI
  client = OpenAI(base_url="{base}", api_key="{key}")
  reply = client.chat.completions.create(
      model="{model}", messages=[{{"role": "user", "content": "Hello!"}}])
  print(reply.choices[0].message.content, reply.usage)

curl:

  curl {base}/chat/completions -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  curl {base}/me -H "Authorization: Bearer {key}"     # balance and usage
  curl {base}/packages                                # the price list; buy with POST {base}/me/orders

Admin commands against this instance (another terminal):

  export TOKENGATE_CONTROL_URL={control} TOKENGATE_ADMIN_KEY={admin_key}
  tokengate accounts list
  REDIS_URL={redis_url} DATABASE_URL={database_url} tokengate billing reconcile --dry-run

Press Ctrl+C to stop.
"""


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run(config_path: str, host: str, port: int, data_dir: str) -> int:
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default
    # handler that would end the process before our children (Redis, simulators, the
    # billing worker) are stopped, so turn it into SystemExit, which runs ``finally``.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    text = Path(config_path).read_text(encoding="utf-8")
    parse_catalog(text, config_path, tokenizers=True)  # a bad file fails here, with its line
    text, notes = without_unkeyed_bridges(text, dict(os.environ))
    for note in notes:
        print(f"tokengate quickstart: {note}", file=sys.stderr)
    catalog = parse_catalog(text, config_path)
    doc = yaml.safe_load(text)
    names = [c["name"] for c in doc["clusters"]]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    config_text, servers = simulated_config(text, ports)
    generated = data / "quickstart-models.yaml"
    generated.write_text(config_text, encoding="utf-8")

    children: list[subprocess.Popen[bytes]] = []
    try:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            redis_port = free_port(6390)
            children.append(start_redis(data / "redis", redis_port))
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        window = max(model.context_window for model in catalog.models.values())
        if servers:
            children.append(start_simulators(servers, data / "simulators.log", window))
        for cluster in catalog.providers:  # each a process of its own: litellm stays out of ours
            children.append(start_bridge(generated, cluster, ports[cluster], data / f"bridge-{cluster}.log"))
        admin_key = os.environ.get("TOKENGATE_ADMIN_KEY") or "tg-admin-" + secrets.token_urlsafe(24)
        port = free_port(port)
        control_port = free_port(port + 1)
        control_url = f"http://127.0.0.1:{control_port}"
        settings = Settings(
            redis_url=redis_url,
            admin_key=SecretStr(admin_key),
            config_path=str(generated),
            database_url=os.environ.get("DATABASE_URL", f"sqlite:///{data / 'ledger.db'}"),
            control_url=control_url,
            data_url=f"http://{_display_host(host)}:{port}",
        )
        password = demo_password(data)
        _, key = asyncio.run(_demo_key(redis_url, settings.database_url, password))
        worker = start_billing_worker(redis_url, settings.database_url, data / "billing-worker.log")
        children.insert(0, worker)  # stopped first, before the Redis it reads
        # The admin API listens on loopback only, whatever --host says: never on the public listener.
        children.insert(0, start_control_plane(settings, "127.0.0.1", control_port, data / "control.log"))
        first_model = next(m["name"] for m in doc["models"] if m.get("kind", "chat") == "chat")
        banner = _banner(f"http://{_display_host(host)}:{port}/v1", control_url, admin_key, key,
                         first_model, redis_url, settings.database_url, password)
        uvloop.run(_serve(settings, host, port, banner))
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"tokengate quickstart: {exc}", file=sys.stderr)
        return 1
    finally:
        stop(children)


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


async def _serve(settings: Settings, host: str, port: int, banner: str) -> None:
    config = uvicorn.Config(create_app(settings), host=host, port=port, loop="uvloop",
                            http=GatewayHttpProtocol, log_level="warning", access_log=False,
                            proxy_headers=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(banner, flush=True)
    await task
