"""What Redis holds of an account's grants, as ``lua/balance_v1.lua`` reads it.

A grant is one purchase's credits. For each grant, at every instant (Redis time),
``credits = available + reserved + spent + expired``: the credits neither reserved nor spent
are available until the grant expires and expired after. The account's balance is the sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.keyspace import reply_text
from gateway.usage import format_allocation, parse_allocation

__all__ = ["BalanceView", "GrantState", "format_allocation", "parse_allocation"]



@dataclass(frozen=True, slots=True)
class GrantState:
    id: str
    credits: int
    available: int
    reserved: int
    spent: int
    expired: int
    expires_ms: int  # 0: never
    models: tuple[str, ...] | None  # None: every model


@dataclass(frozen=True, slots=True)
class BalanceView:
    epoch: str
    now_ms: int  # the Redis time the figures are for
    grants: tuple[GrantState, ...]

    def totals(self) -> dict[str, int]:
        """purchased, reserved, spent, expired and available, in credits."""
        return {
            "purchased": sum(g.credits for g in self.grants),
            "reserved": sum(g.reserved for g in self.grants),
            "spent": sum(g.spent for g in self.grants),
            "expired": sum(g.expired for g in self.grants),
            "available": sum(g.available for g in self.grants),
        }

    @classmethod
    def from_reply(cls, reply: Sequence[Any]) -> BalanceView:
        count, flat = int(reply[2]), reply[3:]
        grants = []
        for i in range(count):
            row = flat[i * 8 : i * 8 + 8]
            models = reply_text(row[7])
            grants.append(
                GrantState(
                    id=reply_text(row[0]),
                    credits=int(row[1]),
                    available=int(row[2]),
                    reserved=int(row[3]),
                    spent=int(row[4]),
                    expired=int(row[5]),
                    expires_ms=int(row[6]),
                    models=tuple(models.split(",")) if models else None,
                )
            )
        return cls(epoch=reply_text(reply[0]), now_ms=int(reply[1]), grants=tuple(grants))
