"""The simulator, a private Redis and a metered tokengate, as the benchmark and soak start them."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from launcher.embedded import free_port, free_ports

from .procs import Child, spawn, wait_ready
from .targets import MODEL, Target

REPO = Path(__file__).resolve().parents[2]
CREDITS = 10**15  # enough that no benchmark ever runs out


def child_env(**extra: str) -> dict[str, str]:
    """The environment of every child: loopback never through a proxy; this clone importable."""
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def start_simulator(workdir: Path) -> tuple[Child, str]:
    """The vLLM simulator with no prefill or decode delay; returns it and its root URL."""
    port = free_port()
    args = [sys.executable, "-m", "loadtest.vllm_sim", "--port", str(port), "--model", MODEL,
            "--ttft-ms", "0", "--itl-ms", "0"]
    child = spawn("simulator", args, workdir / "simulator.log", env=child_env())
    url = f"http://127.0.0.1:{port}"
    wait_ready(child, url + "/health", 60)
    return child, url


def direct_target(sim: Child, sim_url: str) -> Target:
    return Target("direct", sim_url + "/v1", "bench", sim, "vllm_sim",
                  "the simulator itself (ttft 0, itl 0): the floor every proxy adds to")


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: Path) -> tuple[Child, str]:
    """A private redis-server on a free port, AOF and snapshots off (benchmark only)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt install redis-server)")
    data = workdir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--appendonly", "no", "--save", "", "--daemonize", "no"]
    child = spawn("redis", args, workdir / "redis.log")
    deadline = time.monotonic() + 20
    while not _redis_ping(port):
        if not child.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start:\n{child.log_tail()}")
        time.sleep(0.05)
    return child, f"redis://127.0.0.1:{port}/0"


def write_catalog(path: Path, sim_url: str, *, model: str = MODEL, max_in_flight: int | None = None,
                  routing: str = "") -> Path:
    """The benchmark's models.yaml: one endpoint (``max_in_flight`` when given), one model;
    ``routing``: a ``routing:`` section's YAML lines, if any."""
    cap = f", max_in_flight: {max_in_flight}" if max_in_flight else ""
    path.write_text(
        f"""clusters:
  - name: bench
    region: local
    endpoints: [{{url: "{sim_url}"{cap}}}]
{routing}models:
  - name: {model}
    kind: chat
    tokenizer: tiktoken:cl100k_base
    context_window: 4096
    price: {{input: 1, output: 1}}
    deployments: [bench]
""",
        encoding="utf-8",
    )
    return path


def _admin_post(base: str, admin_key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        base + path, data=orjson.dumps(body), method="POST",
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            answer: dict[str, Any] = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {path} answered {exc.code}: {exc.read()[:300]!r}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"POST {path} failed: {exc}") from exc
    return answer


@dataclass
class Gateway:
    child: Child  # the data plane, the process measured
    base: str  # http://127.0.0.1:PORT (the data plane)
    admin_key: str
    control: Child  # the control plane (admin API): set up the accounts, idle while measured
    control_url: str


def start_tokengate(workdir: Path, sim_url: str, redis_url: str, workers: int = 1,
                    config: Path | None = None) -> Gateway:
    """``tokengate control`` and ``tokengate serve`` (one worker by default) on the private
    Redis, ready; ``config``: a models.yaml of the caller's instead of the benchmark's."""
    config = config or write_catalog(workdir / "models.yaml", sim_url)
    port, control_port = free_ports(2)
    admin_key = "tg-admin-" + secrets.token_urlsafe(16)
    control_url = f"http://127.0.0.1:{control_port}"
    env = child_env(
        REDIS_URL=redis_url, TOKENGATE_ADMIN_KEY=admin_key, TOKENGATE_CONFIG=str(config),
        DATABASE_URL=f"sqlite:///{workdir / 'ledger.db'}", TOKENGATE_CONTROL_URL=control_url,
    )
    # As in production (README: `tokengate billing migrate`, once), the ledger is migrated
    # before the gateway starts, so the worker measured is one that serves, not one that
    # also ran the migrations (and still holds alembic).
    subprocess.run([sys.executable, "-m", "launcher.cli", "billing", "migrate"], env=env, cwd=workdir,
                   check=True, capture_output=True, timeout=120)
    args = [sys.executable, "-m", "launcher.cli", "serve", "--config", str(config),
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    control = spawn("tokengate-control", [sys.executable, "-m", "launcher.cli", "control",
                                          "--port", str(control_port)],
                    workdir / "tokengate-control.log", env=env, cwd=workdir)
    child = spawn("tokengate", args, workdir / "tokengate.log", env=env, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(control, control_url + "/readyz", 60)
        wait_ready(child, base + "/readyz", 60)
    except BaseException:
        child.stop()
        control.stop()
        raise
    return Gateway(child, base, admin_key, control, control_url)


async def funded_key(gateway: Gateway, redis_url: str) -> str:
    """A key of a fresh account holding ``CREDITS`` (admin API, then a credit in Redis)."""
    try:
        return await _funded_key(gateway, redis_url)
    except RuntimeError as exc:
        raise RuntimeError(f"tokengate: {exc}\n{gateway.child.log_tail()}") from exc


async def _funded_key(gateway: Gateway, redis_url: str) -> str:
    """A fresh account that bought a package as a customer would (ledger, then Redis)."""
    base, admin = gateway.control_url, gateway.admin_key
    account = _admin_post(base, admin, "/admin/accounts", {"name": "bench"})
    key = _admin_post(base, admin, f"/admin/accounts/{account['id']}/keys", {"name": "bench"})
    package = _admin_post(base, admin, "/admin/packages",
                          {"name": "bench", "credits": CREDITS, "valid_days": 30})
    _admin_post(base, admin, f"/admin/accounts/{account['id']}/purchases",
                {"package_id": package["id"], "order_id": "bench-" + secrets.token_hex(6)})
    return str(key["key"])


def start_billing_worker(workdir: Path, redis_url: str) -> Child:
    """The billing worker, as in production: it drains the usage streams into the ledger."""
    env = child_env(REDIS_URL=redis_url, DATABASE_URL=f"sqlite:///{workdir / 'ledger.db'}")
    args = [sys.executable, "-m", "launcher.cli", "billing", "worker"]
    return spawn("billing-worker", args, workdir / "billing-worker.log", env=env, cwd=workdir)


async def tokengate_target(workdir: Path, sim_url: str, redis: Child, redis_url: str) -> Target:
    """A metered tokengate and a funded key: auth, admission, routing, relay, settlement on."""
    gateway = start_tokengate(workdir, sim_url, redis_url)
    try:
        key = await funded_key(gateway, redis_url)
        worker = start_billing_worker(workdir, redis_url)
    except BaseException:
        gateway.child.stop()
        gateway.control.stop()
        raise
    return Target("tokengate", gateway.base + "/v1", key, gateway.child, _version(),
                  "tokengate serve --workers 1, metering on, billing worker running, control plane "
                  "idle; private redis-server, AOF off",
                  aux=[redis, worker, gateway.control])


def _version() -> str:
    """The commit of this clone, marked when the work tree has changes."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "gateway"],
                               capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "(unknown commit)"
    return commit.stdout.strip() + (" + uncommitted changes in gateway/" if dirty.stdout.strip() else "")
