"""Per-key credit caps: what the key record holds of a cap, and what the counter answers.

A key may be capped at ``credit_limit`` credits per ``credit_period`` (``day``, ``month``:
UTC calendar by Redis time; ``total``). The cap lives in the key record
(``keyspace.key_record_key``: fields ``credit_limit``, ``credit_period``, both '' for no
cap), where admission already reads the key's limits, so an uncapped key costs two more
HMGET fields and nothing else. A capped key's counter (``keyspace.key_spend_key``) holds
the period, what was spent in it and what the key's reservations in flight hold; admission
(``admit_v4.lua``) reserves no more than ``limit - spent - held``, settlement
(``settle_v4.lua``) turns the hold into spending.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.quota.periods import PERIODS


def cap_fields(credit_limit: int | None, credit_period: str | None) -> dict[str, str]:
    """The key record's cap fields; ValueError unless both are set (a valid cap) or neither."""
    if credit_limit is None and credit_period is None:
        return {"credit_limit": "", "credit_period": ""}
    if (
        isinstance(credit_limit, bool)
        or not isinstance(credit_limit, int)
        or credit_limit < 1
        or credit_period not in PERIODS
    ):
        raise ValueError(
            f"a credit cap is a positive number of credits per day, month or total, "
            f"not {credit_limit!r} per {credit_period!r}"
        )
    return {"credit_limit": str(credit_limit), "credit_period": credit_period}


@dataclass(frozen=True, slots=True)
class KeySpend:
    """A capped key's counter by Redis time: ``spent`` in the current ``period`` (its id, see
    ``periods.py``) and ``held`` by the key's requests in flight."""

    period: str
    spent: int
    held: int
