"""models.yaml validation: a bad file names the field and the line at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.catalog import CatalogError, load_catalog, parse_catalog, stand_in_warnings
from gateway.prompt_rules import MediaLimits

GOOD = """\
clusters:
  - name: a
    endpoints:
      - url: http://127.0.0.1:9001
        weight: 2
  - name: b
    endpoints:
      - url: http://127.0.0.1:9002/
        api_key_env: B_KEY
models:
  - name: m
    served_name: org/M
    context_window: 4096
    price: {input: 1, output: 2.25}
    deployments: [a, b]
"""


def test_example_models_yaml_loads() -> None:
    catalog = load_catalog(Path(__file__).parents[2] / "models.yaml")
    assert len(catalog.models) == 3 and len(catalog.clusters) == 2


def test_good_catalog_is_frozen_with_per_mille_prices() -> None:
    catalog = parse_catalog(GOOD, env={"B_KEY": "secret"})
    model = catalog.models["m"]
    assert (model.input_pm, model.output_pm) == (1000, 2250)
    assert [ep.url for ep in model.endpoints] == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert model.endpoints[1].api_key == "secret"


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (("weight: 2", "weight: 2\n        colour: red"), ":6: clusters.0.endpoints.0.colour"),
        (("output: 2.25", "output: 2.2501"), ":14: models.0.price.output"),
        (("deployments: [a, b]", "deployments: [a, c]"), "unknown cluster 'c'"),
        (("http://127.0.0.1:9002/", "http://127.0.0.1:9001"), "duplicate endpoint url 'http://127.0.0.1:9001'"),
        (("context_window: 4096", "context_window: lots"), ":13: models.0.context_window"),
        (("url: http://127.0.0.1:9001", "url: http://127.0.0.1:9001/v1"), ":4: clusters.0.endpoints.0.url"),
        (("    served_name: org/M\n", ""), None),
    ],
)
def test_bad_catalog_names_field_and_line(change: tuple[str, str], where: str | None) -> None:
    text = GOOD.replace(*change)
    if where is None:
        assert parse_catalog(text).models["m"].served_name == "m"
        return
    with pytest.raises(CatalogError) as caught:
        parse_catalog(text, "models.yaml")
    assert where in str(caught.value)


def test_invalid_yaml_is_reported() -> None:
    with pytest.raises(CatalogError, match="invalid YAML"):
        parse_catalog("clusters: [", "x.yaml")


# --- tokenizer exactness, media, allowed fields --------------------------------------------


def test_tokenizer_exactness_defaults() -> None:
    models = "\n".join(
        f"  - name: m{i}\n    tokenizer: {spec}\n{extra}    context_window: 4096\n"
        "    price: {input: 1, output: 1}\n    deployments: [a]"
        for i, (spec, extra) in enumerate([
            ("tiktoken:cl100k_base", ""), ("tiktoken:o200k_base", "    tokenizer_exact: true\n"),
            ("bytes", ""), ("hf:/models/qwen", ""), ("hf:/models/other", "    tokenizer_exact: false\n"),
        ])
    )
    catalog = parse_catalog(GOOD.split("models:")[0] + "models:\n" + models)
    exact = {name: m.tokenizer_exact for name, m in catalog.models.items()}
    assert exact == {"m0": False, "m1": True, "m2": True, "m3": True, "m4": False}
    assert [w.split("'")[1] for w in stand_in_warnings(catalog)] == ["m0", "m4"]
    assert "tiktoken:cl100k_base" in stand_in_warnings(catalog)[0]
    assert "byte bound" in stand_in_warnings(catalog)[0]


def test_media_and_allowed_fields_reach_the_model() -> None:
    text = GOOD.replace("    deployments: [a, b]", "    deployments: [a, b]\n"
                        "    media: {image: 1280, audio: 750}\n    allowed_fields: [chat_template_kwargs]")
    model = parse_catalog(text).models["m"]
    assert model.media == MediaLimits(image=1280, audio=750)
    assert model.allowed_fields == frozenset({"chat_template_kwargs"})
    plain = parse_catalog(GOOD).models["m"]
    assert (plain.media, plain.allowed_fields) == (MediaLimits(), frozenset())


@pytest.mark.parametrize(
    ("addition", "where"),
    [
        ("    media: {image: 1280, hologram: 5}", ":16: models.0.media.hologram"),
        ("    media: {image: 0}", ":16: models.0.media.image"),
        ("    allowed_fields: [temperature]", ":16: models.0.allowed_fields"),
        ("    tokenizer_exact: perhaps", ":16: models.0.tokenizer_exact"),
        ("    kind: embedding\n    media: {image: 10}", "media applies to chat models only"),
        ("    tokenizer: bites", ":16: models.0.tokenizer"),
    ],
)
def test_bad_new_keys_name_field_and_line(addition: str, where: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(GOOD + addition + "\n", "models.yaml")
    assert where in str(caught.value)


BRIDGED = """\
clusters:
  - name: gpu
    endpoints: [{url: "http://127.0.0.1:9001"}]
  - name: anthropic
    kind: litellm
    provider: anthropic
    api_key_env: ANTHROPIC_API_KEY
    api_base: https://anthropic.example
    options: {timeout: 30}
    model_ids: {claude: claude-sonnet-4-5}
    endpoints: [{url: "http://127.0.0.1:9100"}]
models:
  - name: claude
    context_window: 200000
    price: {input: 3, output: 15}
    deployments: [anthropic]
"""


def test_a_litellm_cluster_names_its_provider_and_its_key_only_by_variable() -> None:
    catalog = parse_catalog(BRIDGED, env={"ANTHROPIC_API_KEY": "sk-never-held"})
    provider = catalog.providers["anthropic"]
    assert (provider.name, provider.api_key_env, provider.api_base) == (
        "anthropic", "ANTHROPIC_API_KEY", "https://anthropic.example")
    assert provider.options == {"timeout": 30} and provider.model_id("claude") == "claude-sonnet-4-5"
    assert "sk-never-held" not in repr(catalog)
    assert list(catalog.providers) == ["anthropic"]
    # To the data plane the cluster's endpoints (its bridges) are endpoints like any other.
    assert [ep.url for ep in catalog.models["claude"].endpoints] == ["http://127.0.0.1:9100"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("  - name: gpu\n", "  - name: gpu\n    provider: openai\n"),
         "provider: only for a cluster of kind: litellm"),
        (("    provider: anthropic\n", ""), "names its provider"),
        (("{timeout: 30}", "{api_key: sk-x}"), "options.api_key: credentials come from the environment"),
        (("{claude: claude-sonnet-4-5}", "{clod: x}"), "model_ids names 'clod'"),
        (("    context_window: 200000", "    kind: embedding\n    context_window: 200000"),
         "serves chat models only"),
        (("kind: litellm", "kind: openai"), "clusters.1.kind"),
    ],
)
def test_a_bad_litellm_cluster_is_refused(change: tuple[str, str], message: str) -> None:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(BRIDGED.replace(*change))
    assert message in str(caught.value)
