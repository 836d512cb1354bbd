"""tokengate's processes as the tests run them: real subprocesses on loopback ports.

A gateway here is both planes, as a deployment has them: ``tokengate control`` (admin API,
the ledger behind self-service) started first, then ``tokengate serve`` pointed at it with
``TOKENGATE_CONTROL_URL``. Every process started here is also stopped when the test
session's interpreter exits, so a failing fixture leaves nothing running. A bridge
(``tokengate bridge``) serves one cluster of kind litellm.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai

from gateway.quota.store import QuotaStore
from gateway.state import connect_redis
from launcher.embedded import free_port, free_ports, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "tg-admin-test-secret"
T = TypeVar("T")
_STARTED: list[subprocess.Popen[bytes]] = []


def spawn(args: list[str], log: Path | None, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A child process, its output appended to ``log`` (or discarded); stopped at exit."""
    if log is None:
        process = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    else:
        with log.open("ab") as out:
            process = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    _STARTED.append(process)
    return process


PORT_ATTEMPTS = 4  # a port picked free may be taken (by any outgoing connection) before the bind


class PortTaken(RuntimeError):
    """A child exited because its port was taken between our pick and its bind."""


def log_size(log: Path | None) -> int:
    """Where the next start's output begins in ``log`` (see :func:`bound`)."""
    return log.stat().st_size if log is not None and log.exists() else 0


def bound(process: subprocess.Popen[bytes], log: Path | None, since: int, wait: Callable[[], object]) -> None:
    """``wait`` for the child to serve; PortTaken when it exited because its port was taken
    (its output since ``since`` says so; without a log, any early exit counts), else
    ``wait``'s own error. The child is stopped either way."""
    try:
        wait()
    except RuntimeError:
        stop_process(process)
        if process.poll() is not None and _says_port_taken(log, since):
            raise PortTaken(f"{process.args!r} lost its port") from None
        raise


def on_free_ports(start: Callable[[], T]) -> T:
    """``start()`` (which picks its ports), again while a child lost a picked port."""
    for _ in range(PORT_ATTEMPTS - 1):
        with contextlib.suppress(PortTaken):
            return start()
    return start()


def _says_port_taken(log: Path | None, since: int) -> bool:
    if log is None:
        return True
    with log.open("rb") as out:
        out.seek(since)
        return b"address already in use" in out.read().lower()


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s; nothing when it has ended already."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@atexit.register
def _stop_all() -> None:
    for process in _STARTED:
        if process.poll() is None:
            process.kill()


def tokengate(*args: str) -> list[str]:
    """The ``tokengate`` command line, run by this interpreter."""
    return [sys.executable, "-m", "launcher.cli", *args]


@dataclass
class Sims:
    """Simulated vLLM servers, one process serving several ports."""

    ports: list[int]
    process: subprocess.Popen[bytes]

    def url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def set_fault(self, index: int, **fault: object) -> None:
        httpx.post(self.url(index) + "/sim/faults", json=fault, timeout=5).raise_for_status()

    def clear_faults(self) -> None:
        for i in range(len(self.ports)):
            self.set_fault(i, mode="none")

    def stats(self, index: int) -> dict[str, int]:
        data: dict[str, int] = httpx.get(self.url(index) + "/sim/stats", timeout=5).json()
        return data

    def stop(self) -> None:
        stop_process(self.process)


def start_sims(count: int, models: str, *options: str, log: Path | None = None) -> Sims:
    """``count`` simulators in one process; ``options`` are vllm_sim's (``--itl-ms``, ...)."""

    def start() -> Sims:
        ports = free_ports(count)
        args = [sys.executable, "-m", "loadtest.vllm_sim", *options]
        for port in ports:
            args += ["--port", str(port), "--model", models]
        since = log_size(log)
        process = spawn(args, log)
        bound(process, log, since, lambda: [wait_for_port(port, process) for port in ports])
        return Sims(ports, process)

    return on_free_ports(start)


@dataclass
class Bridge:
    """``tokengate bridge`` serving one cluster of kind litellm at ``url``."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process(self.process)


def start_bridge(config: Path, cluster: str, port: int, log: Path, **env: str) -> Bridge:
    """``tokengate bridge --cluster`` on ``port`` (the cluster's endpoint in ``config``), with
    ``env`` (the provider key) added; ready once ``/health`` answers (litellm takes seconds
    to import)."""
    args = tokengate("bridge", "--config", str(config), "--cluster", cluster, "--port", str(port),
                     "--log-level", "info")
    process = spawn(args, log, {**os.environ, **env}, ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("bridge exited:\n" + log.read_text(errors="replace"))
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return Bridge(url, process, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(process)
    raise RuntimeError("bridge not ready:\n" + log.read_text(errors="replace"))


@dataclass
class Gateway:
    """Both planes of one deployment: ``base`` is the public (data-plane) URL, ``control``
    the control plane's (admin API)."""

    base: str
    control: str
    process: subprocess.Popen[bytes]
    control_process: subprocess.Popen[bytes]
    redis_url: str
    database_url: str
    log: Path
    config: Path

    @property
    def v1(self) -> str:
        return self.base + "/v1"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.control, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                            timeout=10)

    def client(self, key: str) -> httpx.Client:
        """An HTTP client at the public URL with ``key``."""
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {key}"}, timeout=10)

    def openai(self, key: str, **options: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=key, **options)  # type: ignore[arg-type]

    def new_key(self, credits: int = 1_000_000, **limits: object) -> str:
        """A fresh account funded with ``credits`` (in Redis) and one key with ``limits``."""
        return self.new_account(credits, **limits)[1]

    def new_account(self, credits: int = 1_000_000, **limits: object) -> tuple[str, str]:
        """(account id, key) of a fresh account funded with ``credits`` (in Redis)."""
        with self.admin() as admin:
            account = admin.post("/admin/accounts", json={"name": "t"}).raise_for_status().json()
            key = admin.post(f"/admin/accounts/{account['id']}/keys", json={"name": "k", **limits})
            secret: str = key.raise_for_status().json()["key"]
        if credits:
            asyncio.run(credit(self.redis_url, account["id"], credits))
        return account["id"], secret

    def balance(self, account_id: str) -> dict[str, int]:
        with self.admin() as admin:
            data = admin.get(f"/admin/accounts/{account_id}").raise_for_status().json()
        return dict(data["balance"])

    def endpoints(self, timeout: float = 10) -> dict[str, dict[str, Any]]:
        """``/admin/endpoints`` rows by URL, from reports made after this call (the data plane
        publishes its routing each second), so what happened before the call is in them."""
        asked = time.time() * 1000
        deadline = time.monotonic() + timeout
        with self.admin() as admin:
            while True:
                view = admin.get("/admin/endpoints").raise_for_status().json()
                if (view["as_of_ms"] or 0) >= asked or time.monotonic() > deadline:
                    return {row["url"]: row for row in view["data"]}
                time.sleep(0.1)

    def stop(self) -> None:
        """Both planes: the data plane first (it drains settlements), then the control plane."""
        stop_process(self.process)
        stop_process(self.control_process)


async def credit(redis_url: str, account_id: str, credits: int) -> None:
    """Credits straight into the account's Redis balance (no package, no ledger entry)."""
    client = connect_redis(redis_url)
    try:
        await QuotaStore(client).credit(account_id, credits)
    finally:
        await client.aclose()


def environment(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
            "TOKENGATE_ADMIN_KEY": ADMIN_KEY,
            "TOKENGATE_SIGNUPS_PER_HOUR": "100000",  # the tests sign up from loopback all day
            **extra}


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 60) -> None:
    """Until ``url/readyz`` answers 200; the log in the error when the process dies or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited:\n" + log.read_text(errors="replace"))
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_process(process)
    raise RuntimeError(f"{what} not ready:\n" + log.read_text(errors="replace"))


def start_control(config: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``tokengate control`` on a free port, ready (Redis and a migrated ledger)."""

    def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        since = log_size(log)
        process = spawn(tokengate("control", "--config", str(config), "--port", str(port),
                                  "--log-level", "info"), log, env, ROOT)
        url = f"http://127.0.0.1:{port}"
        bound(process, log, since, lambda: wait_ready(url, process, log, "control plane"))
        return process, url

    return on_free_ports(start)


def start_gateway(config: Path, redis_url: str, log: Path, *, database_url: str | None = None,
                  workers: int = 1, **env: str) -> Gateway:
    """Both planes over ``config``: the control plane, then ``tokengate serve`` (``env``
    adds ``TOKENGATE_*`` settings to both). The ledger defaults to SQLite beside the log."""
    database_url = database_url or f"sqlite:///{log.parent / 'ledger.db'}"
    environ = environment(redis_url, database_url, **env)
    control_log = log.with_name(log.stem + "-control" + log.suffix)

    def start() -> Gateway:
        port = free_port()  # known first: the control plane's console links and calls the data plane
        control_env = {"TOKENGATE_DATA_URL": f"http://127.0.0.1:{port}", **environ}
        control_process, control = start_control(config, control_env, control_log)
        args = tokengate("serve", "--config", str(config), "--port", str(port), "--workers", str(workers),
                         "--log-level", "info")
        since = log_size(log)
        process = spawn(args, log, {**environ, "TOKENGATE_CONTROL_URL": control}, ROOT)
        base = f"http://127.0.0.1:{port}"
        try:
            bound(process, log, since, lambda: wait_ready(base, process, log, "gateway"))
        except RuntimeError:
            stop_process(control_process)
            raise
        return Gateway(base, control, process, control_process, redis_url, database_url, log, config)

    return on_free_ports(start)


def start_billing_worker(redis_url: str, database_url: str, log: Path,
                         *options: str) -> subprocess.Popen[bytes]:
    """``tokengate billing worker``: usage streams into the ledger."""
    return spawn(tokengate("billing", "worker", *options), log, environment(redis_url, database_url), ROOT)


def billing_command(redis_url: str, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``tokengate billing ARGS`` in a subprocess; its completed process."""
    return subprocess.run(tokengate("billing", *args), env=environment(redis_url, database_url),
                          capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
