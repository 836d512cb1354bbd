"""Builders for pure routing tests: endpoints, states and pick contexts without I/O."""

from __future__ import annotations

from typing import Any

from gateway.catalog import Catalog, Endpoint, parse_catalog
from gateway.routing.plugins import PickContext
from gateway.routing.registry import EndpointState, ModelRoute, url_seed


def endpoint(name: str, cluster: str = "east", region: str = "r1", weight: int = 1) -> Endpoint:
    return Endpoint(cluster=cluster, region=region, url=f"http://{name}:8000", weight=weight, api_key=None)


def state(name: str, cluster: str = "east", region: str = "r1", weight: int = 1,
          **fields: Any) -> EndpointState:
    ep = endpoint(name, cluster, region, weight)
    made = EndpointState(ep, url_seed(ep.url))
    for key, value in fields.items():
        setattr(made, key, value)
    return made


def context(pool: list[EndpointState], now: float = 100.0, affinity: int = 0,
            tried_clusters: frozenset[str] = frozenset(),
            tier: dict[EndpointState, int] | None = None) -> PickContext:
    return PickContext(ModelRoute("m", pool, tier), now, affinity, tried_clusters)


def names(pool: list[EndpointState]) -> list[str]:
    return [s.endpoint.url.removeprefix("http://").removesuffix(":8000") for s in pool]


def catalog(endpoints: dict[str, list[str]], prefer: list[str] | None = None, routing: str = "",
            regions: dict[str, str] | None = None) -> Catalog:
    """A catalog of one chat model 'm' deployed on the given clusters {cluster: [host, ...]}."""
    regions = regions or {}
    clusters = "".join(
        f"  - name: {cluster}\n    region: {regions.get(cluster, cluster + '-region')}\n    endpoints:\n"
        + "".join(f"      - url: http://{host}:8000\n" for host in hosts)
        for cluster, hosts in endpoints.items()
    )
    text = (
        f"clusters:\n{clusters}models:\n  - name: m\n    context_window: 4096\n"
        f"    price: {{input: 1, output: 1}}\n    deployments: [{', '.join(endpoints)}]\n"
    )
    if prefer:
        text += f"    prefer: [{', '.join(prefer)}]\n"
    if routing:
        text += "routing:\n" + routing
    return parse_catalog(text)
