"""Real processes for gateway tests: simulators, the gateway (uvicorn), Redis on 6379.

Everything runs as it does in production: the gateway is started with ``tokengate serve``
in a subprocess and driven over HTTP with the official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis

from gateway.embedded import free_port, wait_for_port
from gateway.keyspace import all_usage_streams
from gateway.quota.store import QuotaStore
from gateway.state import connect_redis
from gateway.usage import UsageEvent

GATEWAY_REDIS_DB = 2
ADMIN_KEY = "tg-admin-test-secret"
CHAT_MODEL = "chat-model"
SERVED_CHAT = "org/Chat-Model-7B"
EMBED_MODEL = "embed-model"
FLAT_MODEL = "flat-model"  # completion tokens only: a reservation equals the actual cost


@dataclass
class Sims:
    ports: list[int]
    process: subprocess.Popen[bytes]

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def set_fault(self, index: int, **fault: object) -> None:
        httpx.post(self.url(index) + "/sim/faults", json=fault, timeout=5).raise_for_status()

    def clear_faults(self) -> None:
        for i in range(len(self.ports)):
            self.set_fault(i, mode="none")

    def stats(self, index: int) -> dict[str, int]:
        data: dict[str, int] = httpx.get(self.url(index) + "/sim/stats", timeout=5).json()
        return data


def start_sims(count: int, models: str, *options: str) -> Sims:
    """``count`` simulators in one process; ``options`` are vllm_sim's (``--itl-ms``, ...)."""
    ports = [free_port() for _ in range(count)]
    args = [sys.executable, "-m", "loadtest.vllm_sim", *options]
    for port in ports:
        args += ["--port", str(port), "--model", models]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for port in ports:
        wait_for_port(port, process)
    return Sims(ports, process)


def write_config(path: Path, sims: Sims, context_window: int = 4096) -> Path:
    path.write_text(
        f"""
clusters:
  - name: east
    region: r1
    endpoints: [{{url: "{sims.url(0)}"}}]
  - name: west
    region: r2
    endpoints: [{{url: "{sims.url(1)}"}}]
models:
  - name: {CHAT_MODEL}
    served_name: {SERVED_CHAT}
    tokenizer: tiktoken:cl100k_base
    context_window: {context_window}
    price: {{input: 1, output: 2}}
    deployments: [east, west]
  - name: {FLAT_MODEL}
    served_name: {SERVED_CHAT}
    context_window: {context_window}
    price: {{input: 0, output: 1}}
    deployments: [east, west]
  - name: {EMBED_MODEL}
    kind: embedding
    context_window: 8192
    price: {{input: 0.5, output: 0}}
    deployments: [east]
""",
        encoding="utf-8",
    )
    return path


@dataclass
class Gateway:
    base: str
    process: subprocess.Popen[bytes]
    redis_url: str
    log: Path
    config: Path

    @property
    def v1(self) -> str:
        return self.base + "/v1"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                            timeout=10)

    def new_key(self, credits: int = 1_000_000, **limits: object) -> str:
        """A fresh account funded with ``credits`` and one key with ``limits``."""
        return self.new_account(credits, **limits)[1]

    def new_account(self, credits: int = 1_000_000, **limits: object) -> tuple[str, str]:
        """(account id, key) of a fresh account funded with ``credits``."""
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


def usage_events(redis_url: str, *, account_id: str | None = None,
                 request_id: str | None = None) -> list[UsageEvent]:
    """The usage events in the Redis streams (what the billing worker will consume)."""
    client: redis.Redis | redis.RedisCluster
    if redis_url.startswith("redis+cluster://"):
        client = redis.RedisCluster.from_url("redis://" + redis_url.removeprefix("redis+cluster://"))
    else:
        client = redis.Redis.from_url(redis_url)
    events = []
    for stream in all_usage_streams():
        for _id, fields in client.xrange(stream):
            event = UsageEvent.from_fields(fields)
            if account_id not in (None, event.account_id) or request_id not in (None, event.request_id):
                continue
            events.append(event)
    client.close()
    return events


def wait_for_event(redis_url: str, request_id: str, timeout: float = 10.0) -> UsageEvent:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = usage_events(redis_url, request_id=request_id)
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no usage event for {request_id}")


async def credit(redis_url: str, account_id: str, credits: int) -> None:
    client = connect_redis(redis_url)
    try:
        await QuotaStore(client).credit(account_id, credits)
    finally:
        await client.aclose()


def start_gateway(config: Path, redis_url: str, log: Path, **env: str) -> Gateway:
    port = free_port()
    environ = {
        **os.environ,
        "REDIS_URL": redis_url,
        "TOKENGATE_ADMIN_KEY": ADMIN_KEY,
        "TOKENGATE_FIRST_BYTE_TIMEOUT": "3",
        "TOKENGATE_IDLE_TIMEOUT": "3",
        "TOKENGATE_MAX_BODY_BYTES": "65536",
        "DATABASE_URL": f"sqlite:///{log.parent / 'ledger.db'}",
        **env,
    }
    args = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
            "--port", str(port), "--log-level", "info"]
    with log.open("ab") as out:
        process = subprocess.Popen(args, env=environ, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gateway exited:\n" + log.read_text())
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return Gateway(base, process, redis_url, log, config)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("gateway not ready:\n" + log.read_text())


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def sims() -> Iterator[Sims]:
    sims = start_sims(2, f"{SERVED_CHAT},{EMBED_MODEL}")
    yield sims
    stop_process(sims.process)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = f"redis://127.0.0.1:6379/{GATEWAY_REDIS_DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def gateway(sims: Sims, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    gw = start_gateway(write_config(tmp / "models.yaml", sims), redis_url, tmp / "gateway.log")
    yield gw
    stop_process(gw.process)


@pytest.fixture(scope="session")
def gateway2(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A second gateway process on the same Redis and catalog."""
    tmp = tmp_path_factory.mktemp("gateway2")
    gw = start_gateway(gateway.config, gateway.redis_url, tmp / "gateway.log")
    yield gw
    stop_process(gw.process)


@pytest.fixture(autouse=True)
def _no_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sims" in request.fixturenames:
        request.getfixturevalue("sims").clear_faults()


_open_clients: list[openai.OpenAI] = []


def openai_client(base: str, key: str, timeout: float = 30) -> openai.OpenAI:
    """An official client, closed after the test (unclosed sockets fail the test run)."""
    c = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=timeout)
    _open_clients.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()


@pytest.fixture()
def api_key(gateway: Gateway) -> str:
    return gateway.new_key()
