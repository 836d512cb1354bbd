"""What the customers' pages share: their words, the catalog as the console shows it, the
parsing of form numbers (a bad one is a message next to its field, never a 500), and the
404 page of an id that is not the organization's."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import HTMLResponse

from billing.users import Session
from control.console.customer_words import WORDS
from control.console.i18n import add_words, translate
from control.console.web import language, render
from gateway.contract import CatalogError, Settings, load_catalog

add_words(WORDS)
MAX_ID = 64


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A public model as customers see it: never its endpoints or upstream name."""

    name: str
    kind: str
    context_window: int
    input_pm: int  # credits per 1000 prompt tokens
    output_pm: int

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Credits of a request, as the gateway charges it (integers, rounded up)."""
        return -(-(prompt_tokens * self.input_pm + completion_tokens * self.output_pm) // 1000)


class FieldError(ValueError):
    """A form field's value refused, with the message shown next to it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


_cache: dict[str, tuple[float, list[ModelInfo]]] = {}


def models_of(request: Request) -> list[ModelInfo]:
    """The catalog's models, re-read when models.yaml changes (the control plane has no
    reload signal of its own); an unreadable file shows no models rather than a 500."""
    settings: Settings = request.app.state.settings
    path = settings.config_path
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return []
    cached = _cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        catalog = load_catalog(path)
    except CatalogError:
        return cached[1] if cached is not None else []
    models = [
        ModelInfo(m.name, m.kind, m.context_window, m.input_pm, m.output_pm)
        for m in sorted(catalog.models.values(), key=lambda m: m.name)
    ]
    _cache[path] = (mtime, models)
    return models


def words(request: Request) -> Callable[..., str]:
    """``t(key, **values)`` in the request's language (for messages made in Python)."""
    lang = language(request)
    return lambda key, **values: translate(lang, key, **values)


def whole_number(text: str, field: str, low: int, high: int, t: Callable[..., str]) -> int | None:
    """An optional whole number in ``[low, high]`` (empty: None); FieldError otherwise."""
    text = text.strip()
    if not text:
        return None
    if len(text) > 20 or not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise FieldError(field, t("c_whole_number", low=low, high=high))
    return int(text)


def plausible_id(value: str) -> bool:
    """Could be one of our ids (never hand a NUL or a huge string to the database)."""
    return 0 < len(value) <= MAX_ID and value.isprintable()


def per_mille(value: int) -> str:
    """1500 -> "1.5": a price multiplier as models.yaml writes it."""
    whole, rest = divmod(value, 1000)
    return f"{whole}.{rest:03d}".rstrip("0").rstrip(".") if rest else str(whole)


def not_found(request: Request, session: Session | None, message_key: str = "c_not_found") -> HTMLResponse:
    t = words(request)
    return render(
        request, "message.html", session=session, status=404, title=t("c_not_found"), message=t(message_key)
    )
