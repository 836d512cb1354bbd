"""What ``lua/withdraw_v1.lua`` did: credits taken back from grants, once per operation id.

Redis decides what a withdrawal takes, because only Redis knows what requests in flight
hold; billing then posts exactly that to the ledger (entry id = the operation id). The
outcome is kept in the account's withdrawals hash (``keys.withdrawals_key``), so a retry,
a concurrent call or reconcile reads the same outcome back instead of taking twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.keyspace import reply_text
from gateway.usage import parse_allocation

WithdrawMode = Literal["amount", "grant"]


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One withdrawal's outcome, as Redis recorded it when it happened."""

    op_id: str
    applied: bool  # False: refused, the live credits were fewer than asked; nothing taken
    at_ms: int  # Redis time of the withdrawal
    available: int  # 'amount': the live credits then; 'grant': the grant's rest taken
    closed_grant: str | None  # 'grant': the grant closed
    closed_ms: int  # ... and its expiry since (0: none closed)
    allocation: tuple[tuple[str, int], ...]  # the credits taken, by grant, in drawing order
    new: bool = True  # False: an earlier call with this operation id made it

    @property
    def credits(self) -> int:
        """The credits taken (0 when refused)."""
        return sum(n for _, n in self.allocation)

    @classmethod
    def parse(cls, op_id: str, outcome: object, *, new: bool = True) -> Withdrawal:
        """Read the outcome text 'status|at|available|closed grant|closed ms|allocation'."""
        status, at, available, closed, closed_ms, alloc = reply_text(outcome).split("|", 5)
        if status not in ("applied", "short"):
            raise ValueError(f"withdrawal {op_id}: unknown outcome {status!r}")
        return cls(
            op_id=op_id,
            applied=status == "applied",
            at_ms=int(at),
            available=int(available),
            closed_grant=closed or None,
            closed_ms=int(closed_ms),
            allocation=tuple(parse_allocation(alloc)),
            new=new,
        )
