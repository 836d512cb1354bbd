"""The whole system as the fault suite runs it: a Redis and a ledger of the scenario's own,
two simulated vLLM endpoints (one per cluster) that record what they generated per request,
both planes of the gateway and a billing worker, all real processes on loopback.

Each scenario breaks one part (``kill_gateway``, ``kill_worker``, ``kill_redis``, ...) while
``tests.faults.traffic`` runs, then ``tests.faults.audit`` checks the money.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.state import RedisClient, connect_redis
from tests.billing.procs import PostgresServer
from tests.redis_servers import RedisServer
from tests.support.catalogs import model, write_catalog
from tests.support.processes import (
    Gateway,
    Sims,
    billing_command,
    start_billing_worker,
    start_gateway,
    start_sims,
    stop_process,
)
from tests.support.tcp_proxy import SlowProxy

MODEL = "fault-model"
SERVED = "org/Fault-Model"
ITL_MS = 20  # one token every 20 ms: a 60-token stream lasts 1.2 s
# Short enough that an audit need not wait long for a dead gateway's leases.
GATEWAY_ENV = {
    "TOKENGATE_LEASE_SECONDS": "6",
    "TOKENGATE_REAPER_INTERVAL": "0.2",
    "TOKENGATE_AUTH_CACHE_SECONDS": "1",
    "TOKENGATE_FIRST_BYTE_TIMEOUT": "2",
    "TOKENGATE_IDLE_TIMEOUT": "2",
    "TOKENGATE_REDIS_TIMEOUT": "2",
}
# Extra seconds of traffic in every scenario, for a soak (docs/operations.md); 0 in CI.
SOAK = float(os.environ.get("TOKENGATE_FAULT_SECONDS", "0"))
AOF = ("--appendonly", "yes", "--appendfsync", "always")  # what docs/operations.md asks for


@dataclass
class FaultStack:
    redis: RedisServer | None  # the scenario's own standalone Redis (None: a cluster's URL)
    redis_direct: str  # Redis's URL (``redis+cluster://`` for a cluster)
    database_url: str
    sims: Sims
    config: Path
    tmp: Path
    gateways: list[Gateway] = field(default_factory=list)
    worker: subprocess.Popen[bytes] | None = None
    redis_url: str = ""  # what the gateways use (the slow proxy's, in that scenario)
    proxy: SlowProxy | None = None

    @property
    def server(self) -> RedisServer:
        """The scenario's own Redis server (scenarios that kill or flush it)."""
        assert self.redis is not None
        return self.redis

    def connect(self) -> RedisClient:
        """An asyncio client of Redis itself (never through the proxy)."""
        return connect_redis(self.redis_direct)

    @property
    def gateway(self) -> Gateway:
        return self.gateways[0]

    def add_gateway(self, workers: int = 1, **env: str) -> Gateway:
        """Both planes of one more gateway (``workers`` data-plane processes) on this stack's
        Redis and ledger."""
        index = len(self.gateways)
        gateway = start_gateway(self.config, self.redis_url or self.redis_direct,
                                self.tmp / f"gateway{index}.log", database_url=self.database_url,
                                workers=workers, **{**GATEWAY_ENV, **env})
        self.gateways.append(gateway)
        return gateway

    def start_worker(self) -> None:
        """A billing worker, once it is reading the streams."""
        log = self.tmp / "worker.log"
        before = log.read_text().count(" started") if log.exists() else 0
        self.worker = start_billing_worker(self.redis_direct, self.database_url, log,
                                           "--block-ms", "100", "--claim-idle-ms", "1000")
        deadline = time.monotonic() + 30
        while log.read_text().count(" started") == before:
            assert self.worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    def kill_worker(self) -> None:
        """SIGKILL the billing worker (whatever batch it holds stays unacked)."""
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(10)

    def kill_gateway(self, gateway: Gateway) -> None:
        """SIGKILL a data plane: its streams break off, its reservations wait for the reaper."""
        os.kill(gateway.process.pid, signal.SIGKILL)
        gateway.process.wait(10)

    def reconcile(self) -> None:
        done = billing_command(self.redis_direct, self.database_url, "reconcile", "--grace", "0.5")
        assert done.returncode == 0, done.stdout + done.stderr

    def fund(self, credits: int = 10**7, **limits: object) -> tuple[str, str]:
        """(account id, key with ``limits``) of a new account that bought ``credits`` through
        the admin API."""
        with self.gateway.admin() as admin:
            account = admin.post("/admin/accounts", json={"name": "fault"}).raise_for_status().json()
            package = admin.post("/admin/packages", json={"name": "p", "credits": credits, "valid_days": 30})
            admin.post(f"/admin/accounts/{account['id']}/purchases",
                       json={"package_id": package.raise_for_status().json()["id"],
                             "order_id": "o-" + account["id"]}).raise_for_status()
            key = admin.post(f"/admin/accounts/{account['id']}/keys", json={"name": "k", **limits})
        return account["id"], key.raise_for_status().json()["key"]

    def generated(self) -> dict[str, int]:
        """Tokens the upstreams generated per request id (both endpoints, retries added up)."""
        total: dict[str, int] = {}
        for port in self.sims.ports:
            answer = httpx.get(f"http://127.0.0.1:{port}/sim/generated", timeout=10).raise_for_status()
            for request_id, tokens in answer.json()["data"].items():
                total[request_id] = total.get(request_id, 0) + tokens
        return total

    def stop(self) -> None:
        stop_process(self.worker)
        for gateway in reversed(self.gateways):
            gateway.stop()
        self.sims.stop()


@contextmanager
def fault_stack(tmp: Path, *, database_url: str | None = None, redis_args: tuple[str, ...] = (),
                slow_redis: bool = False, redis_url: str | None = None,
                workers: int = 1) -> Iterator[FaultStack]:
    """A stack with one gateway (``workers`` data-plane processes) and a billing worker
    running; SQLite unless ``database_url``; a Redis of its own unless ``redis_url``; with
    ``slow_redis`` the gateways reach Redis through ``stack.proxy`` (the worker does not)."""
    redis = None if redis_url else RedisServer(*redis_args).start()
    sims: Sims | None = None
    stack: FaultStack | None = None
    try:  # whatever fails to start, what did start is stopped
        direct = redis_url or (redis.url if redis else "")
        database_url = database_url or f"sqlite:///{tmp / 'ledger.db'}"
        migrated = billing_command(direct, database_url, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        sims = start_sims(2, SERVED, "--itl-ms", str(ITL_MS), "--record-requests", "1000000",
                          log=tmp / "sims.log")
        config = write_catalog(tmp / "models.yaml", {"east": [sims.url(0)], "west": [sims.url(1)]}, [
            model(MODEL, ["east", "west"], served_name=SERVED, tokenizer="tiktoken:cl100k_base"),
        ])
        stack = FaultStack(redis, direct, database_url, sims, config, tmp)
        if slow_redis:
            stack.proxy = SlowProxy(stack.server.port).start()
            stack.redis_url = stack.proxy.url
        stack.add_gateway(workers)
        stack.start_worker()
        yield stack
    finally:
        if stack is not None:
            stack.stop()
            if stack.proxy is not None:
                stack.proxy.stop()
        elif sims is not None:
            sims.stop()
        if redis is not None:
            redis.cleanup()


@contextmanager
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the scenario's own (one it may stop)."""
    server = PostgresServer().init()
    try:
        yield server
    finally:
        server.cleanup()
