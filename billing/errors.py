"""Billing's errors, in the gateway's error tree (one mapping to HTTP and OpenAI's body).

Conflict            409 conflict_error        (same order_id or package id, other content)
LedgerUnavailable   503 service_unavailable   (the database cannot answer now)
"""

from __future__ import annotations

from gateway.contract import GatewayError, ServiceUnavailable


class Conflict(GatewayError):
    status = 409
    error_type = "conflict_error"


class LedgerUnavailable(ServiceUnavailable):
    """The ledger database is unreachable: control-plane calls fail, the gateway serves on."""
