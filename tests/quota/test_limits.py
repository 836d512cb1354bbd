"""Per-key RPM, TPM and concurrency limits and their headers, against real Redis."""

from __future__ import annotations

import asyncio
import re

import pytest

from gateway.errors import RateLimited
from gateway.quota import QuotaStore

from .helpers import admit, funded_key, settle

RESET = re.compile(r"^(\d+m)?\d+(\.\d+)?s$|^\d+ms$")


async def test_requests_per_minute(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000, rpm=3)
    for left in (2, 1, 0):
        adm = await admit(store, account, key, max_tokens=1)
        assert adm.headers()["x-ratelimit-remaining-requests"] == str(left)
    with pytest.raises(RateLimited) as err:
        await admit(store, account, key, max_tokens=1)
    exc = err.value
    assert exc.status == 429 and exc.code == "rate_limit_exceeded"
    assert "requests" in exc.message
    assert 1 <= int(exc.headers["Retry-After"]) <= 80
    assert exc.headers["x-ratelimit-limit-requests"] == "3"
    assert exc.headers["x-ratelimit-remaining-requests"] == "0"
    assert RESET.match(exc.headers["x-ratelimit-reset-requests"])
    assert "x-ratelimit-limit-tokens" not in exc.headers  # the key has no token limit
    assert (await store.balance(account))["reserved"] == 3 * 12  # the refusal reserved nothing


async def test_tokens_per_minute_count_prompt_and_max_tokens(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000, tpm=100)
    first = await admit(store, account, key, request_id="r1", prompt=10, max_tokens=40)
    assert first.headers()["x-ratelimit-remaining-tokens"] == "50"
    await admit(store, account, key, prompt=10, max_tokens=40)
    with pytest.raises(RateLimited) as err:
        await admit(store, account, key, prompt=10, max_tokens=1)
    assert "tokens" in err.value.message
    assert err.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(err.value.headers["Retry-After"]) >= 1
    # settling gives back what was counted but not used: 50 counted, 15 used
    await settle(store, account, key, "r1", prompt=10, completion=5)
    adm = await admit(store, account, key, prompt=10, max_tokens=25)
    assert adm.headers()["x-ratelimit-remaining-tokens"] == "0"


async def test_without_max_tokens_the_token_window_bounds_the_grant(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000, tpm=100)
    adm = await admit(store, account, key, prompt=10, max_tokens=None, ceiling=4000)
    assert (adm.max_tokens, adm.clamped) == (90, False)
    with pytest.raises(RateLimited):
        await admit(store, account, key, prompt=10, max_tokens=None, ceiling=4000)


async def test_a_request_larger_than_the_token_limit_says_so(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000, tpm=100)
    with pytest.raises(RateLimited) as err:
        await admit(store, account, key, prompt=10, max_tokens=200)
    assert "request too large" in err.value.message
    # Waiting can never make it fit: no Retry-After, so a client does not sleep a minute to
    # be refused again; the x-ratelimit-* headers still say the limit.
    assert "Retry-After" not in err.value.headers and "retry after" not in err.value.message
    assert err.value.headers["x-ratelimit-limit-tokens"] == "100"


async def test_concurrency_limit(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000, max_concurrency=2)
    await admit(store, account, key, request_id="r1", max_tokens=1)
    await admit(store, account, key, request_id="r2", max_tokens=1)
    with pytest.raises(RateLimited) as err:
        await admit(store, account, key, max_tokens=1)
    assert "concurrent" in err.value.message
    assert err.value.headers["Retry-After"] == "1"
    await settle(store, account, key, "r1", prompt=10, completion=1)
    await admit(store, account, key, max_tokens=1)


async def test_expired_leases_free_their_concurrency_slot(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000, max_concurrency=2)
    for _ in range(2):
        await admit(store, account, key, max_tokens=1, lease_ms=20)
    await asyncio.sleep(0.05)
    await admit(store, account, key, max_tokens=1)  # not yet reaped, yet not counted


async def test_headers_on_success(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000, rpm=60, tpm=1000)
    headers = (await admit(store, account, key, prompt=10, max_tokens=90)).headers()
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "59"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    assert headers["x-ratelimit-remaining-tokens"] == "900"
    assert RESET.match(headers["x-ratelimit-reset-tokens"])
    pairs = (await admit(store, account, key, max_tokens=1)).header_pairs()
    assert (b"x-ratelimit-limit-requests", b"60") in pairs
    account2, key2 = await funded_key(store, 10_000)
    assert (await admit(store, account2, key2, max_tokens=1)).headers() == {}


async def test_limits_are_per_key(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000, rpm=1)
    other = "key-other"
    await store.set_key_record(account, other, rpm=1)
    await admit(store, account, key, max_tokens=1)
    await admit(store, account, other, max_tokens=1)
    with pytest.raises(RateLimited):
        await admit(store, account, key, max_tokens=1)
