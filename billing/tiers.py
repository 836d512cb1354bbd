"""An account's tier in fair shares: the weight of its best live package, kept in Redis for
the data plane (gateway/flow.py reads it only when a request must wait at a full model).

Written when it can change: a grant reaching Redis (a purchase, a code, an order paid), a
withdrawal (a refund closes its grant), and reconcile's rebuild. It carries the instant its
package ends, so an expired tier reads as weight 1 without anyone rewriting it; a package
whose credits are all spent stops counting at the next write.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.db.engine import transaction
from billing.db.schema import grants, packages
from gateway.contract import AccountStore


async def refresh_tier(engine: AsyncEngine, store: AccountStore, account_id: str, now_ms: int) -> int:
    """Write the account's tier from the ledger; the weight written (1: none)."""
    query = (
        select(packages.c.weight, grants.c.valid_until_ms)
        .join(packages, packages.c.id == grants.c.package_id)
        .where(grants.c.account_id == account_id, grants.c.valid_until_ms > now_ms,
               grants.c.remaining > 0, grants.c.credits > grants.c.withdrawn, packages.c.weight > 1)
    )
    async with transaction(engine) as conn:
        rows = (await conn.execute(query)).all()
    weight = max((int(r.weight) for r in rows), default=1)
    until = max((int(r.valid_until_ms) for r in rows if int(r.weight) == weight), default=0)
    await store.set_tier(account_id, weight, until)
    return weight
