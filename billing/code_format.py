"""What a redemption code looks like, how a typed one is read back, and what is stored of it.

``TG-XXXXX-XXXXX-XXXXX-XXXXX``: 20 symbols of Crockford's base32 (no I, L, O, U), 100 bits
from ``secrets``, in groups a person can read out, type or copy from paper. Reading one
back forgives case, spaces, dashes (any Unicode dash: word processors turn a hyphen into
an en dash), the ``TG`` prefix, and the look-alikes Crockford allows (O for 0, I and L for 1).
Only the SHA-256 of the canonical 20 symbols is stored: a leaked table redeems nothing,
and with 100 bits of entropy an unsalted hash cannot be reversed by guessing.
"""

from __future__ import annotations

import hashlib
import re
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: 32 symbols, 5 bits each
PREFIX = "TG"
GROUPS, GROUP_SIZE = 4, 5
SYMBOLS = GROUPS * GROUP_SIZE  # 20 symbols: 100 bits
MAX_TYPED = 100  # longer than any spelling of a code with spaces
_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212_]+")
_ALLOWED = frozenset(ALPHABET)


def new_code() -> str:
    """A fresh code, as it is printed: ``TG-XXXXX-XXXXX-XXXXX-XXXXX``."""
    symbols = "".join(secrets.choice(ALPHABET) for _ in range(SYMBOLS))
    groups = (symbols[i : i + GROUP_SIZE] for i in range(0, SYMBOLS, GROUP_SIZE))
    return "-".join((PREFIX, *groups))


def canonical(typed: str) -> str | None:
    """The 20 symbols a typed code stands for; None when it cannot be a code of ours."""
    if len(typed) > MAX_TYPED:
        return None
    compact = _SEPARATORS.sub("", typed).upper().translate(_ALIASES)
    if len(compact) == len(PREFIX) + SYMBOLS and compact.startswith(PREFIX):
        compact = compact[len(PREFIX) :]
    if len(compact) != SYMBOLS or not _ALLOWED.issuperset(compact):
        return None
    return compact


def code_hash(symbols: str) -> str:
    """What the ledger keeps of a code: SHA-256 (hex) of its canonical symbols."""
    return hashlib.sha256(symbols.encode("ascii")).hexdigest()
