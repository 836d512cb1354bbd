"""Both planes of a deployment with the test payment provider, a package on sale, a trial
package and a billing worker (usage reaches the ledger the console reads), on a simulator."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.redis_servers import redis_server
from tests.support.catalogs import model, write_catalog
from tests.support.processes import Gateway, start_billing_worker, start_gateway, start_sims, stop_process

from .browser import Browser

MODEL = "chat-model"
TRIAL_CREDITS = 5_000
STARTER_CREDITS = 100_000


@dataclass
class Console:
    gateway: Gateway

    def browser(self) -> Browser:
        return Browser(self.gateway.control)


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The deployment the console tests share. Its Redis is its own: the gateway's reaper
    settles any expired lease it finds, so on the session's shared server it would settle
    the leases other tests expire on purpose (the quota property test's among them)."""
    with redis_server() as redis:
        yield from _console(redis.url, tmp_path_factory.mktemp("console"))


def _console(redis_url: str, tmp: Path) -> Iterator[Console]:
    sims = start_sims(1, "org/Chat-Model", "--ttft-ms", "5", "--itl-ms", "2", log=tmp / "sim.log")
    config = write_catalog(
        tmp / "models.yaml",
        {"east": [sims.url()]},
        [
            model(
                MODEL, ["east"], served_name="org/Chat-Model", tokenizer="tiktoken:cl100k_base", price=(1, 2)
            )
        ],
    )
    log: Path = tmp / "gateway.log"
    gateway = start_gateway(
        config, redis_url, log, TOKENGATE_PAYMENT_PROVIDER="test", TOKENGATE_AUTH_CACHE_SECONDS="1"
    )
    worker = start_billing_worker(redis_url, gateway.database_url, tmp / "worker.log", "--block-ms", "100")
    try:
        with gateway.admin() as admin:
            for body in (
                {
                    "id": "starter",
                    "name": "Starter",
                    "credits": STARTER_CREDITS,
                    "valid_days": 30,
                    "price": {"amount": 4900, "currency": "CNY"},
                    "for_sale": True,
                },
                {"id": "trial", "name": "Trial", "credits": TRIAL_CREDITS, "valid_days": 5, "trial": True},
            ):
                admin.post("/admin/packages", json=body).raise_for_status()
        yield Console(gateway)
    finally:
        stop_process(worker)
        gateway.stop()
        sims.stop()


@pytest.fixture
def browser(console: Console) -> Iterator[Browser]:
    """A browser signed in to a new organization."""
    b = console.browser()
    b.sign_up()
    yield b
    b.close()
