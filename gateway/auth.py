"""API keys: generation, hashing, and the cached lookup from a presented key to its account.

Keys are ``tg-`` + 32 random bytes (urlsafe base64), stored only as SHA-256 hashes. The
lookup is cached for a few seconds; revocation still acts at once because the admission
script re-reads the key's record (disabled, models, limits) on every request.

The cache of known keys is bounded: past ``_CACHE_LIMIT`` entries the one looked up longest
ago goes (a key in use is looked up again every ``ttl`` seconds, so this is least recently
used at that grain, and a cache hit costs one dict lookup as before). Unknown keys are
remembered apart, in a smaller cache of their own, so random bad keys can never push a good
one out; and failed authentications are limited per client address
(:mod:`gateway.auth_limits`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.asgi import Scope, header
from gateway.auth_limits import FailureLimiter, client_address, per_minute_from_env
from gateway.errors import (
    AuthenticationFailed,
    BalanceUnknown,
    PermissionDenied,
    QuotaUnavailable,
    RateLimited,
)
from gateway.keyspace import PROVISIONED_KEY, key_hash_key, key_record_key
from gateway.redisio import UNAVAILABLE, FastRedis

KEY_PREFIX = "tg-"
NEGATIVE_CACHE_SECONDS = 1.0
_CACHE_LIMIT = 100_000  # known keys
_NEGATIVE_LIMIT = 10_000  # unknown keys (each also counts against its client's failures)


@dataclass(frozen=True, slots=True)
class KeyRef:
    key_id: str
    account_id: str


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of a key safe to show in lists (identifies it to its owner, not to others)."""
    return secret[:10]


def bearer_token(scope: Scope) -> str | None:
    value = header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_admin(token: str | None, admin_key: str | None) -> bool:
    return bool(token and admin_key and hmac.compare_digest(token.encode(), admin_key.encode()))


class Authenticator:
    """Resolves ``Authorization: Bearer tg-...`` to a KeyRef with one cached Redis lookup."""

    def __init__(self, redis: FastRedis, ttl_seconds: float, failures_per_minute: int | None = None,
                 cache_limit: int = _CACHE_LIMIT) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._limit = cache_limit
        # Insertion order is the order of the last lookups in Redis: the first entry is the
        # least recently looked up (an entry is moved to the end when it is looked up again).
        self._cache: dict[str, tuple[float, KeyRef]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()  # digest -> until
        per_minute = per_minute_from_env() if failures_per_minute is None else failures_per_minute
        self._failures = FailureLimiter(per_minute) if per_minute > 0 else None

    async def authenticate(self, token: str | None, scope: Scope | None = None, *,
                           address: str | None = None) -> KeyRef:
        """The key ``token`` is; ``scope``: the request, whose client address the failed
        authentications are limited by; ``address``: that address's bucket when the caller
        knows it better than the TCP peer (the control plane, behind the data plane). No
        limit without either."""
        if not token:
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer tg-...'", code="invalid_api_key"
            )
        digest = hash_key(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        return await self._authenticate_slow(digest, now, hit is not None, scope, address)

    async def _authenticate_slow(self, digest: str, now: float, known: bool, scope: Scope | None,
                                 address: str | None) -> KeyRef:
        """A key not in the cache, or whose entry is stale: looked up in Redis, unless the
        client has failed too often (a key this worker knows is always looked up)."""
        limiter = self._failures if scope is not None or address is not None else None
        where = address if address is not None else client_address(scope) if limiter is not None else ""
        if limiter is not None and not known:
            wait = limiter.retry_after(where, now)
            if wait:
                raise RateLimited(
                    "too many requests with invalid API keys from this address; retry later",
                    code="too_many_invalid_keys",
                    headers={"Retry-After": str(wait)},
                )
        until = self._unknown.get(digest)
        ref = None if until is not None and until > now else await self._lookup(digest)
        if ref is None:
            if until is None or until <= now:
                self._unknown[digest] = now + min(self._ttl, NEGATIVE_CACHE_SECONDS)
                self._unknown.move_to_end(digest)
                if len(self._unknown) > _NEGATIVE_LIMIT:
                    self._unknown.popitem(last=False)
            if limiter is not None:
                limiter.failed(where, now)
            raise AuthenticationFailed("invalid API key", code="invalid_api_key")
        cache = self._cache
        if known:
            cache.pop(digest, None)  # to the end: looked up just now
        elif len(cache) >= self._limit:
            del cache[next(iter(cache))]  # the least recently looked up
        cache[digest] = (now + self._ttl, ref)
        self._unknown.pop(digest, None)
        return ref

    async def authenticate_enabled(self, token: str | None, scope: Scope | None = None) -> KeyRef:
        """As :meth:`authenticate`, and the key must be live: not disabled, not revoked (for
        routes that, unlike inference, do not pass the admission script, which checks that
        itself). The cache cannot keep a revoked key alive: its record is read every time,
        and a record that is gone (revoked, by any control-plane replica) drops it here."""
        return (await self.live_key(token, scope))[0]

    async def live_key(self, token: str | None, scope: Scope | None = None
                       ) -> tuple[KeyRef, list[str] | None]:
        """As :meth:`authenticate_enabled`, with the models the key may use (None: all), read
        from its record in the same round trip."""
        ref = await self.authenticate(token, scope)
        name = key_record_key(ref.account_id, ref.key_id)
        async with _quota_store():
            disabled, models = await self._redis.execute_keyed(name, "HMGET", name, "disabled", "models")
        if disabled is None:  # every live key's record has the field: this one was revoked
            self.forget(ref.key_id)
            raise AuthenticationFailed("invalid API key", code="invalid_api_key")
        if disabled in (b"1", "1"):
            raise AuthenticationFailed("this API key is disabled", code="invalid_api_key")
        if isinstance(models, bytes):
            models = models.decode()
        return ref, models.split(",") if models else None

    async def check_key(self, ref: KeyRef, model: str) -> None:
        """Refuse what admission surely would of the key itself: disabled, or not allowed the
        model (one read; for a big prompt, before it is tokenized: gateway.pipeline). A record
        that is missing is left to admission, which tells a revoked key from lost data."""
        record = key_record_key(ref.account_id, ref.key_id)
        async with _quota_store():
            disabled, models = await self._redis.execute_keyed(record, "HMGET", record, "disabled", "models")
        if disabled in (b"1", "1"):
            raise AuthenticationFailed("this API key is disabled", code="invalid_api_key")
        if isinstance(models, bytes):
            models = models.decode()
        if models and model not in models.split(","):
            raise PermissionDenied("this API key is not allowed to use the requested model",
                                   code="model_not_allowed", param="model")

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache (admin revoked or changed it here)."""
        for digest, (_, ref) in list(self._cache.items()):
            if ref.key_id == key_id:
                del self._cache[digest]

    async def _check_provisioned(self) -> None:
        """An unknown key in a Redis that lost its data is refused as 503, not 401."""
        if not await self._redis.execute_keyed(PROVISIONED_KEY, "EXISTS", PROVISIONED_KEY):
            raise BalanceUnknown(
                "the quota store holds no keys (Redis lost its data?); refusing until an "
                "operator runs `tokengate billing reconcile`",
                code="quota_not_provisioned",
                headers={"Retry-After": "5"},
            )

    async def _lookup(self, digest: str) -> KeyRef | None:
        async with _quota_store():
            name = key_hash_key(digest)
            value = await self._redis.execute_keyed(name, "GET", name)
            if value is None:
                await self._check_provisioned()
                return None
        key_id, _, account_id = (value.decode() if isinstance(value, bytes) else value).partition(" ")
        return KeyRef(key_id=key_id, account_id=account_id)


@contextlib.asynccontextmanager
async def _quota_store() -> AsyncIterator[None]:
    """Redis trouble while authenticating: fail closed (503), never serve unmetered."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise QuotaUnavailable(
            "the quota store is unreachable; refusing to serve unmetered",
            code="quota_unavailable",
            headers={"Retry-After": "2"},
        ) from exc
