"""models.yaml for tests, written from data rather than from one template per test module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def model(name: str, deployments: list[str], *, served_name: str | None = None,
          price: tuple[float, float] = (1, 2), context_window: int = 4096, **fields: Any) -> dict[str, Any]:
    """One model entry; ``fields`` are any other models.yaml keys (``tokenizer``, ``kind``, ...)."""
    entry: dict[str, Any] = {"name": name}
    if served_name:
        entry["served_name"] = served_name
    entry.update(fields)
    entry["context_window"] = context_window
    entry["price"] = {"input": price[0], "output": price[1]}
    entry["deployments"] = deployments
    return entry


def write_catalog(path: Path, clusters: dict[str, list[str] | list[dict[str, Any]]],
                  models: list[dict[str, Any]], routing: dict[str, Any] | None = None,
                  cluster_fields: dict[str, dict[str, Any]] | None = None) -> Path:
    """``clusters`` maps a cluster's name to its endpoints: URLs, or whole endpoint entries
    (``{"url": ..., "max_in_flight": ...}``); the region is ``<name>-region``.
    ``cluster_fields`` adds keys to clusters by name (``kind: litellm``, ``provider``, ...)."""
    extra = cluster_fields or {}
    doc: dict[str, Any] = {
        "clusters": [{"name": name, "region": f"{name}-region",
                      "endpoints": [e if isinstance(e, dict) else {"url": e} for e in endpoints],
                      **extra.get(name, {})}
                     for name, endpoints in clusters.items()],
        "models": models,
    }
    if routing:
        doc["routing"] = routing
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path
