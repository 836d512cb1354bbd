"""The contract between the gateway and billing: the one module billing imports from ``gateway``.

The gateway (data plane) meters requests in Redis and never waits on SQL; billing (the
ledger) is the source of truth for accounts, keys and grants and consumes what the gateway
emits. They meet in Redis, and this module names everything both sides must agree on:

* **the usage event**: :class:`UsageEvent` as settlement appends it to the usage streams
  (:data:`EVENT_FIELDS`, the grant allocation ``'g1:30,g2:5'``, times in milliseconds and
  as ISO 8601), with its vocabularies :data:`Status` and :data:`CountedBy`;
* **the Redis key layout**: :mod:`keyspace` (hash-tagged shards, usage streams),
  :func:`grants_key`, :func:`dead_letter_key` and the consumer group :data:`BILLING_GROUP`;
* **the records billing pushes to Redis and the operations on them**: accounts, keys
  (:class:`AccountRegistry`, :class:`KeyLimits`, :func:`hash_key`) and grants
  (:class:`AccountStore`, :class:`GrantState`, :func:`new_epoch`), and the Redis errors
  (:data:`UNAVAILABLE`) that mean "Redis cannot answer";
* **the errors** billing raises or catches, in the gateway's one error tree (one mapping
  to HTTP status and OpenAI's error body);
* **what a process serving billing's routes shares with the gateway**: the Redis client
  (:func:`connect_redis`, :data:`RedisClient`), the settings, the journal helpers that
  read the billing group's progress, :func:`settle_heap`, and the key cache
  (:class:`KeyAuthenticator`, :func:`key_authenticator`).

Why one module: the data plane can change anything behind it (the relay, the Lua scripts,
the request path) without touching billing, and a change here is a change of the contract,
made on both sides together. Most names are re-exported from where the data plane defines
them, so its hot path imports nothing new. This module imports no SQLAlchemy, FastAPI,
alembic or billing (``tests/unit/test_contract.py`` holds both sides to that).
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway import keyspace
from gateway.accounts import AccountRegistry, KeyLimits
from gateway.auth import Authenticator, KeyRef, display_prefix, hash_key, new_secret
from gateway.errors import (
    AuthenticationFailed,
    BadRequest,
    BalanceUnknown,
    GatewayError,
    NotFound,
    QuotaUnavailable,
    ServiceUnavailable,
)
from gateway.heap import settle_heap
from gateway.keyspace import reply_text
from gateway.quota.accounts import UNAVAILABLE, AccountStore, new_epoch
from gateway.quota.grants import GrantState
from gateway.quota.journal import group_progress, stream_id
from gateway.quota.keys import BILLING_GROUP, dead_letter_key, grants_key
from gateway.quota.scripts import RedisClient
from gateway.settings import Settings
from gateway.state import connect_redis
from gateway.usage import (
    COUNTED_BY,
    COUNTED_BY_GATEWAY,
    COUNTED_BY_UPSTREAM,
    EVENT_FIELDS,
    STATUS_CLIENT_GONE,
    STATUS_EXPIRED,
    STATUS_OK,
    STATUS_PARTIAL,
    STATUS_UPSTREAM_ERROR,
    STATUSES,
    CountedBy,
    Status,
    UsageEvent,
    format_allocation,
    iso_to_ms,
    ms_to_iso,
    parse_allocation,
)

__all__ = [  # grouped in the module docstring
    "BILLING_GROUP",
    "COUNTED_BY",
    "COUNTED_BY_GATEWAY",
    "COUNTED_BY_UPSTREAM",
    "EVENT_FIELDS",
    "STATUSES",
    "STATUS_CLIENT_GONE",
    "STATUS_EXPIRED",
    "STATUS_OK",
    "STATUS_PARTIAL",
    "STATUS_UPSTREAM_ERROR",
    "UNAVAILABLE",
    "AccountRegistry",
    "AccountStore",
    "AuthenticationFailed",
    "BadRequest",
    "BalanceUnknown",
    "CountedBy",
    "GatewayError",
    "GrantState",
    "KeyAuthenticator",
    "KeyLimits",
    "KeyRef",
    "NotFound",
    "QuotaUnavailable",
    "RedisClient",
    "ServiceUnavailable",
    "Settings",
    "Status",
    "UsageEvent",
    "connect_redis",
    "dead_letter_key",
    "display_prefix",
    "format_allocation",
    "grants_key",
    "group_progress",
    "hash_key",
    "iso_to_ms",
    "key_authenticator",
    "keyspace",
    "ms_to_iso",
    "new_epoch",
    "new_secret",
    "parse_allocation",
    "reply_text",
    "settle_heap",
    "stream_id",
]


class KeyAuthenticator(Protocol):
    """The gateway's cached lookup of API keys, as billing's routes use it."""

    async def authenticate(self, token: str | None) -> KeyRef:
        """The key a bearer token is, or :class:`AuthenticationFailed`."""
        ...

    def forget(self, key_id: str) -> None:
        """Drop the key from this process's cache (billing changed or revoked it)."""
        ...


_AUTHENTICATOR_FITS: type[KeyAuthenticator] = Authenticator  # mypy: the gateway's fits the protocol


def key_authenticator(app_state: Any) -> KeyAuthenticator:
    """The authenticator of the gateway that serves in this process (``app.state``)."""
    authenticator: KeyAuthenticator = app_state.gateway.authenticator
    return authenticator
