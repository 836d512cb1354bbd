"""Prefix affinity: requests that share a long prompt prefix go to the same endpoint.

vLLM reuses its KV cache for a prompt prefix it has already computed, so a conversation
(or a long shared system prompt) is cheapest on the endpoint that served it before. The
affinity key hashes the first ``limit`` characters of the prompt's stable part, read
straight from the parsed body (no re-serialisation, no tokenizer): for chat, the roles
and text of the messages up to and including the first user message, which every later
turn of the conversation repeats; for completions, the prompt. Prompts that agree on
those characters agree on the key. A stable part shorter than ``min_chars`` has no key:
it is too short for the prefix cache to matter, and such requests are better spread by
load alone.

The key is per tenant: the gateway sets each account's ``cache_salt`` on the body before the
key is made (``gateway.cache_salt``), and the salt seeds the hash. vLLM shares cached
prefixes only between requests with the same salt, so steering two accounts' identical
prefixes to one endpoint would gain nothing and would put them side by side on purpose;
one account's requests still meet on one endpoint.

Weighted rendezvous hashing (highest random weight) maps a key to one endpoint of the
candidates left after filtering: when an endpoint leaves, only its keys move, and every
gateway process computes the same target (crc32 and integer mixing: no per-process hash seed).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

from gateway.routing.registry import EndpointState

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_TO_UNIT = 1.0 / (1 << 52)  # the top 52 bits + 1/2 map into (0, 1) exactly


def prefix_key(body: dict[str, Any], limit: int, min_chars: int = 0) -> int:
    """A non-zero 64-bit key of the prompt's stable prefix; 0 when there is none."""
    if limit <= 0:
        return 0
    min_chars = min(min_chars, limit)  # a prefix is never asked to be longer than the key
    salt = body.get("cache_salt")
    seed = zlib.crc32(salt.encode()) if isinstance(salt, str) else 0
    messages = body.get("messages")
    if isinstance(messages, list):
        return _messages_key(messages, limit, min_chars, seed)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0] if not isinstance(prompt[0], int) else prompt
    if isinstance(prompt, str):
        if not prompt or len(prompt) < min_chars:
            return 0
        return _mix(zlib.crc32(prompt[:limit].encode(), seed) + 1)
    if isinstance(prompt, list):  # token ids: a few characters each
        if len(prompt) * 4 < min_chars:
            return 0
        return _mix(zlib.crc32(repr(prompt[: limit // 4]).encode(), seed) + 1)
    return 0


def _messages_key(messages: list[Any], limit: int, min_chars: int, seed: int) -> int:
    crc = seed
    left = limit
    for message in messages:
        if left <= 0 or not isinstance(message, dict):
            break
        role = message.get("role")
        if isinstance(role, str):
            crc = zlib.crc32(role.encode(), crc)
        content = message.get("content")
        if isinstance(content, str):
            crc = zlib.crc32(content[:left].encode(), crc)
            left -= len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str) and left > 0:
                    crc = zlib.crc32(text[:left].encode(), crc)
                    left -= len(text)
        if role == "user":
            break  # what follows changes from turn to turn of the conversation
    used = limit - max(left, 0)
    return _mix(crc + 1) if used > 0 and used >= min_chars else 0


def _mix(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers that moves every bit."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def rendezvous(pool: Sequence[EndpointState], key: int, uniform: bool = False) -> EndpointState:
    """The endpoint with the highest (weighted) random score for ``key``; pool not empty.

    ``key`` is already mixed (``prefix_key``), so one multiply and shift per endpoint
    makes a well-spread score (~0.2 µs). With equal weights the raw score decides;
    otherwise weight / -ln(u), u uniform in (0, 1), keeps each endpoint's share by weight.
    """
    best = pool[0]
    top = -1
    best_score = -1.0
    for state in pool:
        value = ((key ^ state.seed) * _GOLDEN) & _M64
        value ^= value >> 29
        if uniform:
            if value > top:
                best, top = state, value
            continue
        score = state.endpoint.weight / -math.log(((value >> 12) + 0.5) * _TO_UNIT)
        if score > best_score:
            best, best_score = state, score
    return best
