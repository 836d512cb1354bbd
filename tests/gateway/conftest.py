"""Real processes for gateway tests: simulators, both planes, Redis on 6379.

Everything runs as it does in production (tests/support starts ``tokengate control`` and
``tokengate serve`` as subprocesses) and is driven over HTTP with the official ``openai``
client.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import redis

from gateway.keyspace import all_usage_streams
from gateway.usage import UsageEvent
from tests.support.catalogs import model, write_catalog
from tests.support.processes import ADMIN_KEY, Gateway, Sims, credit, start_sims, stop_process
from tests.support.processes import start_gateway as start_both_planes

__all__ = ["ADMIN_KEY", "Gateway", "Sims", "credit", "start_sims", "stop_process"]

# Redis db of the session's gateways (flushed at start); parallel runs on one machine pick others.
GATEWAY_REDIS_DB = int(os.environ.get("TOKENGATE_TEST_REDIS_DB", "2"))
CHAT_MODEL = "chat-model"
SERVED_CHAT = "org/Chat-Model-7B"
EMBED_MODEL = "embed-model"
FLAT_MODEL = "flat-model"  # completion tokens only: a reservation equals the actual cost


def write_config(path: Path, sims: Sims, context_window: int = 4096) -> Path:
    """Two clusters (east, west), one simulator each; a chat, a flat-priced and an embedding model."""
    return write_catalog(path, {"east": [sims.url(0)], "west": [sims.url(1)]}, [
        model(CHAT_MODEL, ["east", "west"], served_name=SERVED_CHAT, tokenizer="tiktoken:cl100k_base",
              context_window=context_window),
        model(FLAT_MODEL, ["east", "west"], served_name=SERVED_CHAT, context_window=context_window,
              price=(0, 1)),
        model(EMBED_MODEL, ["east"], kind="embedding", context_window=8192, price=(0.5, 0)),
    ])


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


def start_gateway(config: Path, redis_url: str, log: Path, **env: str) -> Gateway:
    """Both planes with the gateway tests' short timeouts and small body bound."""
    defaults = {"TOKENGATE_FIRST_BYTE_TIMEOUT": "3", "TOKENGATE_IDLE_TIMEOUT": "3",
                "TOKENGATE_MAX_BODY_BYTES": "65536"}
    return start_both_planes(config, redis_url, log, **{**defaults, **env})


@pytest.fixture(scope="session")
def sims() -> Iterator[Sims]:
    sims = start_sims(2, f"{SERVED_CHAT},{EMBED_MODEL}")
    yield sims
    sims.stop()


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
    gw.stop()


@pytest.fixture(scope="session")
def gateway2(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A second gateway process on the same Redis and catalog."""
    tmp = tmp_path_factory.mktemp("gateway2")
    gw = start_gateway(gateway.config, gateway.redis_url, tmp / "gateway.log",
                       DATABASE_URL=gateway.database_url)
    yield gw
    gw.stop()


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
