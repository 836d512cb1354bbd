"""Both planes as processes, and the schemas schemathesis runs against them.

The processes are the gateway tests' (two simulators, Redis, ``tokengate control`` and
``tokengate serve``), with the ledger in a PostgreSQL database of the session, as production
has it, and the test payment provider, so that orders can be placed. Every run is bounded
(``max-examples`` per operation in the fuzzing phase; the coverage phase is finite) and
seeded, so it generates the same cases each time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from schemathesis.schemas import BaseSchema

from tests.billing.conftest import postgres_url
from tests.gateway.conftest import (
    CHAT_MODEL,
    EMBED_MODEL,
    FLAT_MODEL,
    redis_url,
    sims,
    start_gateway,
    write_config,
)
from tests.support.processes import ADMIN_KEY, ROOT, Gateway, Sims

__all__ = ["postgres_url", "redis_url", "sims"]  # fixtures of other packages, used here

V1_SCHEMA = ROOT / "docs" / "openapi-v1.yaml"
SEED = 18  # issue #18
# A value the schema allows may still be refused with a 400 for what no schema can say (a
# cursor the listing never gave, a URL that is not public), never with a 422: that would
# mean the schema and the validation disagree.
ACCEPTED = ["2xx", "3xx", "400", "401", "403", "404", "409", "429"]


def config(base_url: str, credential: str, max_examples: int,
           **checks: dict[str, Any]) -> schemathesis.Config:
    """A seeded run against ``base_url`` with ``credential`` (a bearer token) on every request."""
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": base_url,
        "headers": {"Authorization": f"Bearer {credential}"},
        "generation": {"max-examples": max_examples, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED}, **checks},
    })


@pytest.fixture(scope="session")
def gateway(sims: Sims, redis_url: str, postgres_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("schema")
    gw = start_gateway(write_config(tmp / "models.yaml", sims), redis_url, tmp / "gateway.log",
                       DATABASE_URL=postgres_url, TOKENGATE_PAYMENT_PROVIDER="test")
    with gw.admin() as admin:  # a package on sale, for the orders
        admin.post("/admin/packages", json={
            "id": "starter", "name": "Starter", "credits": 5000, "valid_days": 30,
            "price": {"amount": 4900, "currency": "CNY"}, "for_sale": True,
        }).raise_for_status()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def control_openapi(gateway: Gateway) -> dict[str, Any]:
    """The control plane's OpenAPI, as the admin reads it from the running control plane."""
    answer = httpx.get(gateway.control + "/admin/openapi.json", timeout=10,
                       headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    doc: dict[str, Any] = answer.raise_for_status().json()
    return doc


@pytest.fixture(scope="session")
def customer_key(gateway: Gateway) -> str:
    """A key whose balance no run exhausts."""
    return gateway.new_key(credits=10**12)


@pytest.fixture()
def admin_schema(gateway: Gateway, control_openapi: dict[str, Any]) -> BaseSchema:
    """The admin routes (and the probes), with the admin key."""
    schema = schemathesis.openapi.from_dict(control_openapi, config=config(gateway.control, ADMIN_KEY, 15))
    return schema.include(path_regex="^/(admin|healthz|readyz)")


@pytest.fixture()
def self_service_schema(gateway: Gateway, control_openapi: dict[str, Any],
                        customer_key: str) -> BaseSchema:
    """Self-service (``/v1/me*``, ``/v1/packages``) at the control plane, with an API key."""
    schema = schemathesis.openapi.from_dict(control_openapi, config=config(gateway.control, customer_key, 15))
    return schema.include(path_regex="^/v1/")


@pytest.fixture()
def forwarded_schema(gateway: Gateway, control_openapi: dict[str, Any], customer_key: str) -> BaseSchema:
    """Self-service asked of the data plane, which forwards it to the control plane."""
    schema = schemathesis.openapi.from_dict(control_openapi, config=config(gateway.base, customer_key, 10))
    return schema.include(path_regex="^/v1/")


@pytest.fixture()
def v1_schema(gateway: Gateway, customer_key: str) -> BaseSchema:
    """docs/openapi-v1.yaml, its model names this gateway's catalog's (any other is a 404).

    The gateway checks the fields it meters and routes by and leaves the values of the others
    to the model server (vLLM refuses them with a 400 the gateway relays); the simulator here
    does not check them all, so the run does not ask that invalid values be refused."""
    doc = yaml.safe_load(V1_SCHEMA.read_text(encoding="utf-8"))
    doc["components"]["schemas"]["GenerativeModel"]["enum"] = [CHAT_MODEL, FLAT_MODEL]
    doc["components"]["schemas"]["EmbeddingModel"]["enum"] = [EMBED_MODEL]
    lenient = config(gateway.base, customer_key, 25, negative_data_rejection={"enabled": False})
    return schemathesis.openapi.from_dict(doc, config=lenient)
