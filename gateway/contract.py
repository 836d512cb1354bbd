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
  (:class:`AccountRegistry`, :class:`KeyLimits` with its :class:`CreditLimit`,
  :func:`hash_key`; the credit cap's :data:`PERIODS`, :func:`period_id`,
  :func:`period_start_ms` and :class:`KeySpend`) and grants
  (:class:`AccountStore`, :class:`GrantState`, :func:`new_epoch`), withdrawals
  (:class:`Withdrawal`, :func:`withdrawals_key`), and the Redis errors
  (:data:`UNAVAILABLE`) that mean "Redis cannot answer";
* **the errors** billing raises or catches, in the gateway's one error tree (one mapping
  to HTTP status and OpenAI's error body);
* **what a process serving billing's routes shares with the gateway**: the Redis client
  (:func:`connect_redis`, :data:`RedisClient`), the settings, the journal helpers that
  read the billing group's progress, :func:`settle_heap`, and the key cache
  (:class:`KeyAuthenticator`, :func:`key_authenticator`, :func:`open_key_authenticator`);
* **what the control plane needs of the data plane**: the admin credential check
  (:func:`bearer_token`, :func:`is_admin`), the plain ASGI helpers its admin door uses,
  the error body (:func:`error_body`, :func:`error_type_for`), request ids, the catalog
  loader to validate a reload, and the Redis channel between the planes (:mod:`ops`:
  routing reports, reload requests).

Why one module: the data plane can change anything behind it (the relay, the Lua scripts,
the request path) without touching billing, and a change here is a change of the contract,
made on both sides together. Most names are re-exported from where the data plane defines
them, so its hot path imports nothing new. This module imports no SQLAlchemy, FastAPI,
alembic or billing (``tests/unit/test_contract.py`` holds both sides to that).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway import keyspace, ops
from gateway.accounts import AccountRegistry, CreditLimit, KeyLimits
from gateway.asgi import (
    ASGIApp,
    ClientGone,
    Message,
    Receive,
    Scope,
    Send,
    read_body,
    send_error,
    with_header,
)
from gateway.auth import Authenticator, KeyRef, bearer_token, display_prefix, hash_key, is_admin, new_secret
from gateway.catalog import CatalogError, load_catalog
from gateway.errors import (
    AuthenticationFailed,
    BadRequest,
    BalanceUnknown,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    QuotaUnavailable,
    RateLimited,
    ServiceUnavailable,
    error_body,
    error_type_for,
)
from gateway.heap import settle_heap
from gateway.keyspace import reply_text
from gateway.quota.accounts import UNAVAILABLE, AccountStore, new_epoch
from gateway.quota.caps import KeySpend
from gateway.quota.grants import GrantState
from gateway.quota.journal import group_progress, stream_id
from gateway.quota.keys import BILLING_GROUP, dead_letter_key, grants_key, withdrawals_key
from gateway.quota.periods import PERIODS, CreditPeriod, period_id, period_start_ms
from gateway.quota.scripts import RedisClient
from gateway.quota.withdrawals import Withdrawal
from gateway.redisio import fast_redis
from gateway.request_id import new_request_id
from gateway.settings import Settings
from gateway.state import connect_redis
from gateway.tokenizers import TokenizerError
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
    "PERIODS",
    "STATUSES",
    "STATUS_CLIENT_GONE",
    "STATUS_EXPIRED",
    "STATUS_OK",
    "STATUS_PARTIAL",
    "STATUS_UPSTREAM_ERROR",
    "UNAVAILABLE",
    "ASGIApp",
    "AccountRegistry",
    "AccountStore",
    "AuthenticationFailed",
    "BadRequest",
    "BalanceUnknown",
    "CatalogError",
    "ClientGone",
    "CountedBy",
    "CreditLimit",
    "CreditPeriod",
    "GatewayError",
    "GrantState",
    "KeyAuthenticator",
    "KeyLimits",
    "KeyRef",
    "KeySpend",
    "Message",
    "NotFound",
    "PayloadTooLarge",
    "QuotaUnavailable",
    "RateLimited",
    "Receive",
    "RedisClient",
    "Scope",
    "Send",
    "ServiceUnavailable",
    "Settings",
    "Status",
    "TokenizerError",
    "UsageEvent",
    "Withdrawal",
    "bearer_token",
    "connect_redis",
    "dead_letter_key",
    "display_prefix",
    "error_body",
    "error_type_for",
    "format_allocation",
    "grants_key",
    "group_progress",
    "hash_key",
    "is_admin",
    "iso_to_ms",
    "key_authenticator",
    "keyspace",
    "load_catalog",
    "ms_to_iso",
    "new_epoch",
    "new_request_id",
    "new_secret",
    "open_key_authenticator",
    "ops",
    "parse_allocation",
    "period_id",
    "period_start_ms",
    "read_body",
    "reply_text",
    "send_error",
    "settle_heap",
    "stream_id",
    "with_header",
    "withdrawals_key",
]


class KeyAuthenticator(Protocol):
    """The gateway's cached lookup of API keys, as billing's routes use it."""

    async def authenticate(self, token: str | None, *, address: str | None = None) -> KeyRef:
        """The key a bearer token is, or :class:`AuthenticationFailed`; with the client's
        ``address`` (its bucket), failed keys from it are limited as on the data plane
        (:class:`RateLimited`, ``too_many_invalid_keys``, past the limit)."""
        ...

    def forget(self, key_id: str) -> None:
        """Drop the key from this process's cache (billing changed or revoked it)."""
        ...


_AUTHENTICATOR_FITS: type[KeyAuthenticator] = Authenticator  # mypy: the gateway's fits the protocol


def key_authenticator(app_state: Any) -> KeyAuthenticator:
    """The key authenticator of the app that serves billing's routes (``app.state``)."""
    authenticator: KeyAuthenticator = app_state.authenticator
    return authenticator


def open_key_authenticator(settings: Settings) -> tuple[KeyAuthenticator, Callable[[], Awaitable[None]]]:
    """The data plane's key lookup on a Redis client of its own, and what closes it."""
    fast = fast_redis(settings.redis_url, settings.redis_timeout)
    return Authenticator(fast, settings.auth_cache_seconds), fast.aclose
