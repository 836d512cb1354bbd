"""A prefix-cache salt per account, so that tenants never share vLLM's KV cache.

vLLM reuses the KV blocks of any earlier request with the same prefix, and how fast a
prompt comes back tells whether someone else sent that prefix before (CVE-2025-46570). A
request's ``cache_salt`` joins the hash of its first block, so only requests with the same
salt share cached prefixes. The gateway sets it on every chat and completions request it
forwards: ``base64url(HMAC-SHA256(secret, "cache_salt:" + account_id))``, 43 characters
(256 bits, as vLLM recommends). A client's own ``cache_salt`` is refused
(``gateway.request_fields``). Prefix affinity hashes the salt into its key, so one
account's shared prefixes still meet on one endpoint while two accounts' never do on purpose.

The secret must be the same in every data-plane process, or each worker salts an account
differently and its requests stop sharing a cache across workers:

1. ``TOKENGATE_CACHE_SALT_SECRET`` (set it in production; at least 32 characters);
2. otherwise derived from ``TOKENGATE_ADMIN_KEY`` when the data plane has it (HMAC with a
   label of its own: the salt reveals nothing of the key);
3. otherwise a random secret per process, with a warning at start: isolation holds, but
   with several workers each keeps its own copy of an account's prefixes.

Changing the secret costs one cold prefix cache, nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets

from gateway.settings import Settings

log = logging.getLogger("tokengate.cache_salt")

_CACHE_LIMIT = 100_000  # accounts remembered per process (~150 bytes each)


class CacheSalter:
    __slots__ = ("_key", "_salts", "source")

    def __init__(self, secret: bytes, source: str = "given") -> None:
        self._key = hashlib.sha256(b"tokengate cache_salt v1\0" + secret).digest()
        self._salts: dict[str, str] = {}
        self.source = source

    @classmethod
    def from_settings(cls, settings: Settings) -> CacheSalter:
        if settings.cache_salt_secret is not None:
            return cls(settings.cache_salt_secret.get_secret_value().encode(), "TOKENGATE_CACHE_SALT_SECRET")
        if settings.admin_key is not None and settings.admin_key.get_secret_value():
            return cls(b"admin-key\0" + settings.admin_key.get_secret_value().encode(), "TOKENGATE_ADMIN_KEY")
        log.warning(
            "TOKENGATE_CACHE_SALT_SECRET is not set (nor TOKENGATE_ADMIN_KEY): each gateway "
            "process salts prefix caches with a random secret of its own, so with several "
            "workers an account's requests share vLLM's prefix cache only within one worker"
        )
        return cls(secrets.token_bytes(32), "random")

    def salt(self, account_id: str) -> str:
        """The account's salt (cached: one HMAC per account and process)."""
        salt = self._salts.get(account_id)
        if salt is None:
            digest = hmac.new(self._key, b"cache_salt:" + account_id.encode(), hashlib.sha256).digest()
            salt = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if len(self._salts) >= _CACHE_LIMIT:
                self._salts.clear()
            self._salts[account_id] = salt
        return salt
