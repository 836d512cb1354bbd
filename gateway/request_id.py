"""Request ids: one per request, its x-request-id, its reservation and its usage record."""

from __future__ import annotations

import secrets


def new_request_id() -> str:
    """A fresh id no client can choose (a billing id a client chose could be reused)."""
    return "req_" + secrets.token_hex(12)
