"""A weak admin key is accepted, with a warning at start.

The admin key (``TOKENGATE_ADMIN_KEY``) opens every account, key and ledger entry. One that
is short or repetitive can be guessed; the control plane still starts with it (a local trial
needs no ceremony), but says so in its log. Make one with ``openssl rand -base64 32`` or
``python -c 'import secrets; print(secrets.token_urlsafe(32))'``.
"""

from __future__ import annotations

import math
from collections import Counter

MIN_LENGTH = 24
MIN_BITS = 64  # the key's length times the entropy of its own characters (24 random hex: ~80)
MIN_DISTINCT = 10  # characters


def estimated_bits(key: str) -> float:
    """A rough upper estimate of the key's entropy: its length times the Shannon entropy of
    its character frequencies (a repeated or few-letter key scores low; a random one does not)."""
    if not key:
        return 0.0
    counts = Counter(key)
    per_char = -sum(n / len(key) * math.log2(n / len(key)) for n in counts.values())
    return max(0.0, per_char * len(key))


def weakness(key: str | None) -> str | None:
    """Why ``key`` is a weak admin key, or None when it looks strong (or there is none)."""
    if not key:
        return None
    if len(key) < MIN_LENGTH:
        return f"it is {len(key)} characters long (use at least {MIN_LENGTH} random ones)"
    bits = estimated_bits(key)
    if bits < MIN_BITS or len(set(key)) < MIN_DISTINCT:
        return (
            f"it looks guessable ({len(set(key))} distinct characters, about {bits:.0f} bits by "
            f"their frequencies; a random key of {MIN_LENGTH}+ characters has more)"
        )
    return None
