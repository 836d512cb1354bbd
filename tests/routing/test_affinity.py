"""The prefix key and rendezvous hashing: stable, cheap, and spreading keys evenly."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gateway.routing.affinity import prefix_key, rendezvous
from tests.routing.helpers import state

SYSTEM = "You are a careful assistant for the tax office. " * 20  # ~1000 characters


def chat(*contents: str, roles: tuple[str, ...] = ("system", "user", "assistant", "user")) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in zip(roles, contents, strict=False)]}


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (chat(SYSTEM, "question one"), chat(SYSTEM, "another question"), True),  # shared long prefix
        (chat("short", "question one"), chat("short", "another question"), False),
        (chat(SYSTEM, "q"), chat(SYSTEM, "q", "answer", "follow-up"), True),  # a conversation grows
        (chat("Be brief.", "x" * 300), chat("Be brief.", "x" * 300, "answer", "and then?"), True),
        (chat("Be brief.", "x" * 300, "answer", "more"), chat("Be brief.", "x" * 300, "other", "more"),
         True),  # later turns never change the key: every turn goes where the first went
        (chat("x" * 600), chat("x" * 600, roles=("user",)), False),  # the role counts
        (chat(SYSTEM), {"messages": [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]}]},
         True),  # content parts read like a string
        ({"prompt": SYSTEM + "a"}, {"prompt": SYSTEM + "b"}, True),
        ({"prompt": [SYSTEM + "a", "x"]}, {"prompt": SYSTEM + "b"}, True),  # the first prompt
        ({"prompt": "abc"}, {"prompt": "abd"}, False),
        ({"prompt": list(range(1000))}, {"prompt": [*range(999), 5]}, True),  # token ids
    ],
)
def test_prefix_key_equal_iff_the_first_characters_are(
    a: dict[str, Any], b: dict[str, Any], same: bool
) -> None:
    ka, kb = prefix_key(a, 512), prefix_key(b, 512)
    assert ka != 0 and kb != 0
    assert (ka == kb) is same


@pytest.mark.parametrize(
    "body",
    [{"input": "embed me"}, {"messages": []}, {"prompt": ""}, {"messages": [{"role": "user"}]}, {}],
)
def test_no_prompt_no_key(body: dict[str, Any]) -> None:
    assert prefix_key(body, 512) == 0
    assert prefix_key(chat(SYSTEM), 0) == 0


@pytest.mark.parametrize(
    "body",
    [chat("Be brief.", "What is 2+2?"), {"prompt": "Once upon a time"}, {"prompt": list(range(20))},
     chat("Be brief.", "hi", "x" * 1000, "y" * 1000)],  # the stable part is short
)
def test_short_prompts_have_no_key(body: dict[str, Any]) -> None:
    """Below ``min_chars`` there is nothing worth caching: load alone spreads them."""
    assert prefix_key(body, 512, min_chars=256) == 0
    assert prefix_key(body, 512) != 0


def test_long_prompts_keep_their_key_with_a_minimum() -> None:
    assert prefix_key(chat(SYSTEM, "q"), 512, min_chars=256) == prefix_key(chat(SYSTEM, "q"), 512)
    assert prefix_key({"prompt": "x" * 300}, 512, min_chars=256) != 0
    assert prefix_key({"prompt": "x" * 100}, 64, min_chars=256) != 0  # min is capped by the limit


def test_key_is_stable_across_processes() -> None:
    # crc32 then splitmix64: the same in every process, unlike Python's salted str hash
    assert prefix_key({"prompt": "hello"}, 512) == 0x5E07F066D75C14D6


KEYS = [prefix_key({"prompt": f"conversation {i}"}, 512) for i in range(8000)]


@pytest.mark.parametrize("uniform", [True, False])
def test_rendezvous_spreads_evenly_and_moves_only_the_lost_endpoints_keys(uniform: bool) -> None:
    pool = [state("a"), state("b"), state("c")]
    before = {k: rendezvous(pool, k, uniform) for k in KEYS}
    share = Counter(s.endpoint.url for s in before.values())
    assert all(2400 < n < 2933 for n in share.values()), share
    after = {k: rendezvous([pool[0], pool[2]], k, uniform) for k in KEYS}
    moved = [k for k in KEYS if before[k] is not after[k]]
    assert moved and all(before[k] is pool[1] for k in moved)  # only b's keys moved
    assert all(rendezvous(list(reversed(pool)), k, uniform) is before[k] for k in KEYS[:200])


def test_weighted_rendezvous_keeps_shares_by_weight() -> None:
    pool = [state("a"), state("b"), state("c", weight=2)]
    share = Counter(rendezvous(pool, k).endpoint.url for k in KEYS)
    assert 1800 < share["http://a:8000"] < 2200 and 3700 < share["http://c:8000"] < 4300, share
