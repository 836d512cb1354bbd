"""API keys: generation, hashing, and the cached lookup from a presented key to its account.

Keys are ``tg-`` + 32 random bytes (urlsafe base64), stored only as SHA-256 hashes. The
lookup is cached for a few seconds; revocation still acts at once because the admission
script re-reads the key's record (disabled, models, limits) on every request.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.asgi import Scope, header
from gateway.errors import AuthenticationFailed, BalanceUnknown, QuotaUnavailable
from gateway.keyspace import PROVISIONED_KEY, key_hash_key, key_record_key
from gateway.redisio import UNAVAILABLE, FastRedis

KEY_PREFIX = "tg-"
NEGATIVE_CACHE_SECONDS = 1.0
_CACHE_LIMIT = 100_000


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

    def __init__(self, redis: FastRedis, ttl_seconds: float) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, KeyRef | None]] = {}

    async def authenticate(self, token: str | None) -> KeyRef:
        if not token:
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer tg-...'", code="invalid_api_key"
            )
        digest = hash_key(token)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            ref = hit[1]
        else:
            ref = await self._lookup(digest)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            ttl = self._ttl if ref is not None else min(self._ttl, NEGATIVE_CACHE_SECONDS)
            self._cache[digest] = (now + ttl, ref)
        if ref is None:
            raise AuthenticationFailed("invalid API key", code="invalid_api_key")
        return ref

    async def authenticate_enabled(self, token: str | None) -> KeyRef:
        """As :meth:`authenticate`, and the key must be live: not disabled, not revoked (for
        routes that, unlike inference, do not pass the admission script, which checks that
        itself). The cache cannot keep a revoked key alive: its record is read every time,
        and a record that is gone (revoked, by any control-plane replica) drops it here."""
        ref = await self.authenticate(token)
        name = key_record_key(ref.account_id, ref.key_id)
        async with _quota_store():
            disabled = await self._redis.execute_keyed(name, "HGET", name, "disabled")
        if disabled is None:  # every live key's record has the field: this one was revoked
            self.forget(ref.key_id)
            raise AuthenticationFailed("invalid API key", code="invalid_api_key")
        if disabled in (b"1", "1"):
            raise AuthenticationFailed("this API key is disabled", code="invalid_api_key")
        return ref

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache (admin revoked or changed it here)."""
        for digest, (_, ref) in list(self._cache.items()):
            if ref is not None and ref.key_id == key_id:
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
