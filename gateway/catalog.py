"""models.yaml: the operator's catalog of clusters and models, validated into a frozen Catalog.

A bad file fails at start with the field and the line at fault (``CatalogError``): we keep
the line of every YAML node while loading and map pydantic's error locations onto them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.media_urls import MediaHosts
from gateway.prompt_rules import UNKNOWABLE_FIELDS, MediaLimits
from gateway.routing.config import RoutingConfig
from gateway.tokenizers import TokenizerError, load_tokenizer

ModelKind = Literal["chat", "embedding"]  # what a model serves: /v1/chat|completions or /v1/embeddings
# What a cluster's endpoints are: vLLM (or any OpenAI-compatible) servers, or bridges of ours
# (`tokengate bridge`) to a provider litellm calls. The data plane relays to both alike.
ClusterKind = Literal["vllm", "litellm"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Provider options that would be credentials: those come from the environment only.
_SECRET_OPTION = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EndpointSpec(_Strict):
    url: str = Field(pattern=r"^https?://[^/\s]+(/[^\s]*)?$")
    weight: int = Field(default=1, ge=1, le=1000)
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    # Requests one data-plane process sends here at most; past it they wait their fair turn
    # (gateway/flow.py). Its capacity (vLLM's --max-num-seqs) over the processes sending to it.
    max_in_flight: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("url")
    @classmethod
    def _no_v1_suffix(cls, url: str) -> str:
        url = url.rstrip("/")
        if url.endswith("/v1"):
            raise ValueError("give the server root, without the /v1 suffix")
        return url


class ClusterSpec(_Strict):
    name: str = Field(pattern=_NAME)
    region: str = ""
    endpoints: list[EndpointSpec] = Field(min_length=1)
    kind: ClusterKind = "vllm"
    # kind: litellm only: what `tokengate bridge --cluster <name>` calls (docs/models-yaml.md).
    provider: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    api_key_env: str | None = Field(default=None, pattern=_ENV_NAME)  # the provider's key: never in the file
    api_base: str | None = Field(default=None, pattern=r"^https?://[^/\s]+(/[^\s]*)?$")
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)
    model_ids: dict[str, str] = Field(default_factory=dict)  # served_name -> the provider's model id

    @model_validator(mode="after")
    def _provider_fields(self) -> ClusterSpec:
        given = [name for name in ("provider", "api_key_env", "api_base", "options", "model_ids")
                 if getattr(self, name)]
        if self.kind == "vllm" and given:
            raise ValueError(f"{', '.join(given)}: only for a cluster of kind: litellm")
        if self.kind == "litellm" and not self.provider:
            raise ValueError("a cluster of kind: litellm names its provider (e.g. provider: anthropic)")
        for option in self.options:
            if _SECRET_OPTION.search(option):
                raise ValueError(f"options.{option}: credentials come from the environment "
                                 "(api_key_env), never from models.yaml")
        return self


class PriceSpec(_Strict):
    """Credits per token as decimals with at most three places (held as per-mille integers)."""

    input: Decimal
    output: Decimal

    @field_validator("input", "output", mode="before")
    @classmethod
    def _exact_decimal(cls, value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("a price is a number such as 1, 0.5 or 2.25")
        try:
            dec = Decimal(str(value))
        except InvalidOperation as exc:
            raise ValueError(f"not a number: {value!r}") from exc
        if dec < 0 or dec != dec.quantize(Decimal("0.001")):
            raise ValueError("a price is >= 0 with at most three decimals")
        return dec

    @property
    def input_pm(self) -> int:
        return int(self.input * 1000)

    @property
    def output_pm(self) -> int:
        return int(self.output * 1000)


class MediaSpec(_Strict):
    """The prompt tokens one content part of each kind can take at most (placeholders and
    markers included); a kind left out is refused with 400."""

    image: int | None = Field(default=None, ge=1, le=10_000_000)
    audio: int | None = Field(default=None, ge=1, le=10_000_000)
    video: int | None = Field(default=None, ge=1, le=10_000_000)


class ModelSpec(_Strict):
    name: str = Field(pattern=_NAME)
    served_name: str | None = None
    kind: ModelKind = "chat"
    tokenizer: str = "tiktoken:cl100k_base"
    # Whether `tokenizer` is the model's own. Default: yes for hf:<dir> and bytes, no for
    # tiktoken (a stand-in: reservations then hold the prompt's UTF-8 byte bound).
    tokenizer_exact: bool | None = None
    context_window: int = Field(ge=16, le=10_000_000)
    price: PriceSpec
    deployments: list[str] = Field(min_length=1)
    # Routing preference: cluster names or regions, best first; others take the spill-over.
    prefer: list[str] = Field(default_factory=list)
    media: MediaSpec | None = None
    # Request fields that make the prompt unknowable, accepted for this model all the same.
    allowed_fields: list[str] = Field(default_factory=list)

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_scheme(cls, spec: str) -> str:
        if spec != "bytes" and not re.match(r"^(tiktoken|hf):.+", spec):
            raise ValueError("tokenizer is 'tiktoken:<encoding>', 'hf:<local directory>' or 'bytes'")
        return spec

    @field_validator("allowed_fields")
    @classmethod
    def _known_fields(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in UNKNOWABLE_FIELDS:
                raise ValueError(f"{name!r} is none of the fields that need allowing: "
                                 + ", ".join(UNKNOWABLE_FIELDS))
        return names

    @model_validator(mode="after")
    def _media_for_chat(self) -> ModelSpec:
        if self.media is not None and self.kind != "chat":
            raise ValueError("media applies to chat models only")
        return self

    @property
    def exact(self) -> bool:
        """The resolved ``tokenizer_exact``."""
        if self.tokenizer_exact is not None:
            return self.tokenizer_exact
        return not self.tokenizer.startswith("tiktoken:")


class MediaUrlsSpec(_Strict):
    """Hosts whose http(s) media URLs the upstream may fetch (``*.example.com``: its
    subdomains); even they are refused when they resolve to a non-public address."""

    allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not re.match(r"^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$", host):
                raise ValueError(f"{host!r} is not a host name (no scheme, port or path; "
                                 "'*.example.com' for subdomains)")
        return hosts


class CatalogSpec(_Strict):
    clusters: list[ClusterSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    media_urls: MediaUrlsSpec = Field(default_factory=MediaUrlsSpec)

    @model_validator(mode="after")
    def _references(self) -> CatalogSpec:
        clusters = [c.name for c in self.clusters]
        _unique(clusters, "cluster name")
        # One server, one place: its health, load and affinity are tracked by URL.
        urls = [ep.url for c in self.clusters for ep in c.endpoints]
        _unique(urls, "endpoint url", " (an endpoint belongs to one cluster)")
        _unique([m.name for m in self.models], "model name")
        bridged = {c.name for c in self.clusters if c.kind == "litellm"}
        for model in self.models:
            for dep in model.deployments:
                if dep not in clusters:
                    raise ValueError(f"model {model.name!r} is deployed on unknown cluster {dep!r}")
                if dep in bridged and model.kind != "chat":
                    raise ValueError(f"model {model.name!r} is deployed on cluster {dep!r} of kind "
                                     "litellm, which serves chat models only")
        for cluster in self.clusters:
            served = {m.served_name or m.name for m in self.models if cluster.name in m.deployments}
            for name in cluster.model_ids:
                if name not in served:
                    raise ValueError(f"cluster {cluster.name!r}: model_ids names {name!r}, the "
                                     "served_name of none of the models deployed on it")
            places = {c.name for c in self.clusters if c.name in model.deployments}
            places |= {c.region for c in self.clusters if c.name in model.deployments and c.region}
            for preferred in model.prefer:
                if preferred not in places:
                    raise ValueError(
                        f"model {model.name!r} prefers {preferred!r}, which is none of its "
                        "deployments' clusters or regions"
                    )
        return self


def _unique(names: list[str], what: str, why: str = "") -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} {name!r}{why}")
        seen.add(name)


# --- the frozen runtime view -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream vLLM server as the router sees it."""

    cluster: str
    region: str
    url: str
    weight: int
    api_key: str | None
    max_in_flight: int | None = None  # per data-plane process; None: no local cap

    @property
    def id(self) -> str:
        return self.url


@dataclass(frozen=True, slots=True)
class Provider:
    """A cluster of kind litellm: the provider its bridge calls. Only ``tokengate bridge``
    reads it; the data plane relays to the cluster's endpoints (the bridges) as to vLLM.
    The key is named, not held: the bridge reads it from its own environment."""

    cluster: str
    name: str  # litellm's provider prefix: anthropic, gemini, bedrock, ...
    api_key_env: str | None
    api_base: str | None
    options: dict[str, str | int | float | bool]
    model_ids: dict[str, str]  # served_name -> the provider's model id (default: served_name)

    def model_id(self, served_name: str) -> str:
        return self.model_ids.get(served_name, served_name)


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    served_name: str
    kind: ModelKind
    tokenizer: str
    context_window: int
    input_pm: int
    output_pm: int
    endpoints: tuple[Endpoint, ...]
    prefer: tuple[str, ...] = ()
    tokenizer_exact: bool = True  # False: a stand-in; reservations use the byte bound
    media: MediaLimits = field(default_factory=MediaLimits)
    allowed_fields: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Catalog:
    models: dict[str, Model]
    clusters: tuple[str, ...]
    source: str = ""
    endpoints: tuple[Endpoint, ...] = field(default=())
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    media_hosts: MediaHosts = field(default_factory=MediaHosts)  # models.yaml media_urls.allowed_hosts
    providers: dict[str, Provider] = field(default_factory=dict)  # by cluster, kind: litellm only

    def get(self, name: str) -> Model | None:
        return self.models.get(name)


def stand_in_warnings(catalog: Catalog) -> list[str]:
    """One line per model whose prompts are estimated with a tokenizer not its own."""
    return [
        f"model {m.name!r} estimates prompts with a stand-in tokenizer ({m.tokenizer}): "
        "reservations hold each prompt's UTF-8 byte bound (~5x its tokens for English text). "
        "Point 'tokenizer: hf:<dir>' at the model's tokenizer.json, or set 'tokenizer_exact: true' "
        "if this is its own tokenizer"
        for m in catalog.models.values()
        if not m.tokenizer_exact
    ]


class CatalogError(ValueError):
    """models.yaml is unreadable or invalid; the message names the field and the line."""


def build_catalog(spec: CatalogSpec, source: str = "", env: dict[str, str] | None = None) -> Catalog:
    env = dict(os.environ) if env is None else env
    by_cluster: dict[str, tuple[Endpoint, ...]] = {}
    for cluster in spec.clusters:
        by_cluster[cluster.name] = tuple(
            Endpoint(
                cluster=cluster.name,
                region=cluster.region,
                url=ep.url,
                weight=ep.weight,
                api_key=env.get(ep.api_key_env) if ep.api_key_env else None,
                max_in_flight=ep.max_in_flight,
            )
            for ep in cluster.endpoints
        )
    models = {
        m.name: Model(
            name=m.name,
            served_name=m.served_name or m.name,
            kind=m.kind,
            tokenizer=m.tokenizer,
            context_window=m.context_window,
            input_pm=m.price.input_pm,
            output_pm=m.price.output_pm,
            endpoints=tuple(ep for dep in m.deployments for ep in by_cluster[dep]),
            prefer=tuple(m.prefer),
            tokenizer_exact=m.exact,
            media=MediaLimits(**m.media.model_dump()) if m.media else MediaLimits(),
            allowed_fields=frozenset(m.allowed_fields),
        )
        for m in spec.models
    }
    all_endpoints = tuple(ep for eps in by_cluster.values() for ep in eps)
    providers = {
        c.name: Provider(c.name, c.provider or "", c.api_key_env, c.api_base, dict(c.options),
                         dict(c.model_ids))
        for c in spec.clusters if c.kind == "litellm"
    }
    return Catalog(models=models, clusters=tuple(by_cluster), source=source, endpoints=all_endpoints,
                   routing=spec.routing, media_hosts=MediaHosts.of(spec.media_urls.allowed_hosts),
                   providers=providers)


def load_catalog(path: str | Path, env: dict[str, str] | None = None, *,
                 tokenizers: bool = False) -> Catalog:
    """Read, validate and freeze models.yaml; raise CatalogError naming field and line.

    ``tokenizers``: also load every model's tokenizer (once per process), so that a bad
    one fails here, with its line, rather than at the first request or mid start-up.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read: {exc}") from exc
    return parse_catalog(text, str(path), env, tokenizers=tokenizers)


def parse_catalog(text: str, source: str = "models.yaml", env: dict[str, str] | None = None, *,
                  tokenizers: bool = False) -> Catalog:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: invalid YAML: {exc}") from exc
    lines = _node_lines(node) if node is not None else {}
    try:
        spec = CatalogSpec.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise CatalogError(_describe(exc, lines, source)) from None
    if tokenizers:
        for index, model in enumerate(spec.models):
            try:
                load_tokenizer(model.tokenizer)
            except TokenizerError as exc:
                line = lines.get(("models", index, "tokenizer"), lines.get(("models", index), 1))
                raise CatalogError(
                    f"invalid models.yaml:\n  {source}:{line}: models.{index}.tokenizer: {exc}"
                ) from None
    return build_catalog(spec, source, env)


def _node_lines(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Map every key path (('models', 0, 'price')) to its 1-based line in the file."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines.update(_node_lines(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_node_lines(item, (*path, index)))
    return lines


def _describe(exc: ValidationError, lines: dict[tuple[Any, ...], int], source: str) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        at = loc
        while at not in lines and at:
            at = at[:-1]
        field_name = ".".join(str(p) for p in loc) or "(top level)"
        line = lines.get(at, 1)
        problems.append(f"{source}:{line}: {field_name}: {err['msg']}")
    return "invalid models.yaml:\n  " + "\n  ".join(problems)
