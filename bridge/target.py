"""What one bridge serves: a cluster of ``kind: litellm`` from models.yaml, its provider's key
read from the environment, and the models deployed on it by the name the data plane sends."""

from __future__ import annotations

import os
from dataclasses import dataclass

import litellm

from gateway.catalog import Catalog, Model, Provider


class TargetError(ValueError):
    """The bridge cannot serve this cluster (the message says why, for the operator)."""


@dataclass(frozen=True, slots=True)
class Target:
    cluster: str
    provider: Provider
    api_key: str | None = None  # the provider's, from the environment
    models: dict[str, Model] | None = None  # by served_name: what the data plane sends as "model"
    tokens: frozenset[str] = frozenset()  # bearer tokens the data plane may send (none: any)

    def model(self, served_name: str) -> Model | None:
        return (self.models or {}).get(served_name)

    def litellm_model(self, model: Model) -> str:
        """litellm's ``provider/model-id`` for a model of this cluster."""
        return f"{self.provider.name}/{self.provider.model_id(model.served_name)}"


def load_target(catalog: Catalog, cluster: str, env: dict[str, str] | None = None) -> Target:
    env = dict(os.environ) if env is None else env
    provider = catalog.providers.get(cluster)
    if provider is None:
        litellm_clusters = ", ".join(sorted(catalog.providers)) or "none"
        raise TargetError(f"{catalog.source}: no cluster {cluster!r} of kind: litellm "
                          f"(those of kind litellm: {litellm_clusters})")
    if provider.name not in {str(getattr(p, "value", p)) for p in litellm.provider_list}:
        raise TargetError(f"cluster {cluster!r}: litellm knows no provider {provider.name!r}")
    api_key = None
    if provider.api_key_env:
        api_key = env.get(provider.api_key_env)
        if not api_key:
            raise TargetError(f"cluster {cluster!r}: the provider key ${provider.api_key_env} is not set")
    endpoints = [ep for ep in catalog.endpoints if ep.cluster == cluster]
    if any(ep.api_key is None for ep in endpoints) and any(ep.api_key for ep in endpoints):
        raise TargetError(f"cluster {cluster!r}: some endpoints name an api_key_env that is not set here; "
                          "the bridge accepts the bearer tokens of all of them, so set each")
    models = {m.served_name: m for m in catalog.models.values()
              if any(ep.cluster == cluster for ep in m.endpoints)}
    tokens = frozenset(ep.api_key for ep in endpoints if ep.api_key)
    return Target(cluster, provider, api_key, models, tokens)
