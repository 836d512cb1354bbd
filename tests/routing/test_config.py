"""The optional routing keys of models.yaml: defaults, validation with field and line."""

from __future__ import annotations

import pytest

from gateway.catalog import CatalogError, parse_catalog
from tests.routing.helpers import catalog

BASE = """\
clusters:
  - name: wuhan
    region: hubei-east
    endpoints: [{url: "http://a:1"}, {url: "http://b:1"}]
  - name: yichang
    region: hubei-west
    endpoints: [{url: "http://c:1"}]
models:
  - name: m
    context_window: 4096
    price: {input: 1, output: 1}
    deployments: [wuhan, yichang]
"""


def test_defaults_without_routing_keys() -> None:
    cat = parse_catalog(BASE)
    assert cat.models["m"].prefer == ()
    assert cat.routing.picker == "p2c" and cat.routing.filters[0] == "available"


def test_prefer_by_region_or_cluster_and_routing_section() -> None:
    text = BASE + "    prefer: [hubei-east, yichang]\n"
    text += "routing:\n  probe_interval: 0.5\n  scorers: {affinity: 2}\n"
    cat = parse_catalog(text)
    assert cat.models["m"].prefer == ("hubei-east", "yichang")
    assert cat.routing.probe_interval == 0.5 and cat.routing.scorers == {"affinity": 2}


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("    prefer: [mars]\n", "prefers 'mars'"),
        ("routing:\n  probe_intervall: 1\n", ":14: routing.probe_intervall"),
        ("routing:\n  scorers: {luck: 1}\n", ":14: routing.scorers.luck"),
        ("routing:\n  filters: [available, available]\n", "a filter is listed twice"),
        ("routing:\n  picker: random\n", ":14: routing.picker"),
        ("routing:\n  eject_base_seconds: 10\n  eject_max_seconds: 5\n", "eject_max_seconds"),
    ],
)
def test_bad_routing_keys_name_field_and_line(extra: str, where: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(BASE + extra, "models.yaml")
    assert where in str(caught.value)


def test_tiers_follow_the_preference_order() -> None:
    from gateway.routing.router import Router

    cat = catalog({"a": ["a1"], "b": ["b1"], "c": ["c1"]}, prefer=["c", "a-region"])
    tier = Router(cat).registry.routes["m"].tier
    assert tier is not None
    assert {s.endpoint.cluster: t for s, t in tier.items()} == {"c": 0, "a": 1, "b": 2}
