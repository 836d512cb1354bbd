"""Admission against real Redis (standalone and Cluster): refusals, clamps, reservations."""

from __future__ import annotations

import pytest

from gateway import keyspace
from gateway.errors import (
    AuthenticationFailed,
    BadRequest,
    BalanceExhausted,
    BalanceUnknown,
    PermissionDenied,
)
from gateway.quota import QuotaStore, cost
from gateway.quota.scripts import RedisClient

from .helpers import PRICES, admit, funded_key, new_id


async def test_unknown_key_is_refused(store: QuotaStore) -> None:
    account, _key = await funded_key(store, 1000)
    with pytest.raises(AuthenticationFailed) as err:
        await admit(store, account, "no-such-key")
    assert err.value.status == 401


async def test_disabled_and_deleted_keys_are_refused(store: QuotaStore) -> None:
    account, key = await funded_key(store, 1000)
    await store.set_key_record(account, key, disabled=True)
    with pytest.raises(AuthenticationFailed):
        await admit(store, account, key)
    await store.set_key_record(account, key, disabled=False)
    await admit(store, account, key)
    await store.delete_key_record(account, key)
    with pytest.raises(AuthenticationFailed):
        await admit(store, account, key)


async def test_model_outside_the_keys_list_is_refused(store: QuotaStore) -> None:
    account, key = await funded_key(store, 1000, models=["small", "big-v2"])
    await admit(store, account, key, model="small", max_tokens=1)
    await admit(store, account, key, model="big-v2", max_tokens=1)
    for model in ("big", "sma", "small,big-v2"):
        with pytest.raises(PermissionDenied) as err:
            await admit(store, account, key, model=model)
        assert err.value.status == 403


async def test_missing_balance_is_refused_never_free(store: QuotaStore) -> None:
    account, key = new_id("acct"), new_id("key")
    await store.set_key_record(account, key)
    with pytest.raises(BalanceUnknown) as err:
        await admit(store, account, key)
    assert err.value.status == 503 and err.value.headers["Retry-After"]
    with pytest.raises(BalanceUnknown):
        await store.credit(account, 100)  # a purchase alone must not invent a balance
    with pytest.raises(BalanceUnknown):
        await store.balance(account)


async def test_ids_with_a_bar_are_refused(store: QuotaStore) -> None:
    with pytest.raises(ValueError):
        await store.init_balance("a|b")
    with pytest.raises(ValueError):
        await store.set_key_record("acct", "k|1")


async def test_init_balance_leaves_an_existing_balance_alone(store: QuotaStore) -> None:
    account, _key = await funded_key(store, 500)
    await store.init_balance(account)
    assert (await store.balance(account))["purchased"] == 500


async def test_exhausted_balance_is_refused_with_a_clear_message(store: QuotaStore) -> None:
    account, key = await funded_key(store, 11)  # prompt 10 at 1/token + 1 output at 2 = 12
    with pytest.raises(BalanceExhausted) as err:
        await admit(store, account, key, prompt=10)
    assert err.value.status == 402
    assert "11 credits available" in err.value.message
    assert "needs at least 12" in err.value.message
    await store.credit(account, 101)
    await admit(store, account, key, prompt=10, max_tokens=None)  # holds all 112 credits
    with pytest.raises(BalanceExhausted, match=r"0 credits available \(112 more held by"):
        await admit(store, account, key, prompt=10)
    empty, key2 = await funded_key(store, 0)
    with pytest.raises(BalanceExhausted, match="0 credits available"):
        await admit(store, empty, key2)
    bal = await store.balance(account)
    assert bal["reserved"] == 112 and bal["available"] == 0


async def test_grant_is_clamped_by_the_balance(store: QuotaStore) -> None:
    account, key = await funded_key(store, 60)  # 10 prompt + 25 output * 2 = 60
    adm = await admit(store, account, key, prompt=10, max_tokens=100)
    assert (adm.max_tokens, adm.requested_max_tokens, adm.clamped) == (25, 100, True)
    assert adm.prompt_tokens == 10
    assert adm.reserve == cost(10, 25, 1000, 2000) == 60
    bal = await store.balance(account)
    assert (bal["reserved"], bal["available"]) == (60, 0)


async def test_grant_is_clamped_by_the_context_window(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000)
    adm = await admit(store, account, key, prompt=10, max_tokens=500, ceiling=300)
    assert (adm.max_tokens, adm.clamped) == (300, True)
    adm = await admit(store, account, key, prompt=10, max_tokens=None, ceiling=300)
    assert (adm.max_tokens, adm.clamped) == (300, False)
    adm = await admit(store, account, key, prompt=10, max_tokens=7, ceiling=300)
    assert (adm.max_tokens, adm.clamped, adm.reserve) == (7, False, 24)


async def test_no_max_tokens_takes_what_the_balance_pays(store: QuotaStore) -> None:
    account, key = await funded_key(store, 100)
    adm = await admit(store, account, key, prompt=10, max_tokens=None, ceiling=10_000)
    assert (adm.max_tokens, adm.reserve, adm.clamped) == (45, 100, False)


async def test_odd_prices_never_reserve_more_than_available(store: QuotaStore) -> None:
    account, key = await funded_key(store, 7)
    adm = await admit(store, account, key, prompt=3, input_pm=333, output_pm=1001)
    assert adm.reserve <= 7
    assert cost(3, adm.max_tokens + 1, 333, 1001) > 7


async def test_prompt_filling_the_context_window_is_a_bad_request(store: QuotaStore) -> None:
    account, key = await funded_key(store, 1000)
    with pytest.raises(BadRequest) as err:
        await admit(store, account, key, ceiling=-1)
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(BadRequest):
        await admit(store, account, key, max_tokens=0)


async def test_prompt_only_request_reserves_the_prompt(store: QuotaStore) -> None:
    """Ceiling 0 (embeddings): nothing to complete; the prompt alone must be affordable."""
    account, key = await funded_key(store, 10)
    adm = await admit(store, account, key, prompt=20, ceiling=0, input_pm=500, output_pm=0)
    assert (adm.max_tokens, adm.reserve) == (0, 10)
    with pytest.raises(BalanceExhausted):
        await admit(store, account, key, prompt=2, ceiling=0, input_pm=500, output_pm=0)


async def test_admitting_an_id_twice_reserves_once(store: QuotaStore) -> None:
    account, key = await funded_key(store, 1000)
    first = await admit(store, account, key, request_id="same", max_tokens=20)
    again = await admit(store, account, key, request_id="same", max_tokens=20)
    assert not first.replayed and again.replayed
    assert (again.reserve, again.max_tokens, again.started_ms) == (
        first.reserve,
        first.max_tokens,
        first.started_ms,
    )
    assert (await store.balance(account))["reserved"] == first.reserve


async def test_admission_records_lease_and_reservation(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await funded_key(store, 1000)
    adm = await admit(store, account, key, request_id="r1", prompt=12, max_tokens=30)
    assert adm.lease_deadline_ms == adm.started_ms + store.lease_ms
    res = (await store.reservations(account))["r1"]
    assert (res.reserve, res.prompt_tokens, res.max_tokens, res.key_id, res.model) == (
        adm.reserve,
        12,
        30,
        key,
        "m",
    )
    leases = keyspace.leases_key(keyspace.shard_of(account))
    assert await client.zscore(leases, f"{account}|r1") == adm.lease_deadline_ms
    inflight = keyspace.inflight_key(account, key)
    assert await client.zscore(inflight, "r1") == adm.lease_deadline_ms


@pytest.mark.parametrize(
    ("credits", "max_tokens", "granted"),
    [
        (10 + 2 * 30, 30, 30),  # what was asked: 10 per choice
        (10 + 2 * 29, 30, 27),  # 29 affordable: 9 per choice, never 10, 10, 9
        (10 + 2 * 3, 30, 3),  # one each
    ],
)
async def test_choices_share_the_grant_evenly(store: QuotaStore, credits: int, max_tokens: int,
                                              granted: int) -> None:
    account, key = await funded_key(store, credits)
    adm = await admit(store, account, key, prompt=10, max_tokens=max_tokens, ceiling=3000, choices=3)
    assert adm.max_tokens == granted and adm.max_tokens % 3 == 0
    assert adm.reserve == cost(10, granted, **PRICES) <= credits


async def test_a_balance_short_of_one_token_per_choice_is_refused(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10 + 2 * 2)  # the prompt and two tokens
    with pytest.raises(BalanceExhausted) as caught:
        await admit(store, account, key, prompt=10, max_tokens=5, ceiling=3000, choices=3)
    assert "needs at least 16" in caught.value.message  # 10 + 2 x 3
