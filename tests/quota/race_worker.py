"""A process of the admission race (test_race.py): connect, wait for the start, admit."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import BalanceExhausted
from gateway.quota import QuotaStore

from .helpers import connect


async def admit_many(store: QuotaStore, account: str, key: str, ids: list[str]) -> list[str]:
    """Admit every id at once; the ids admitted. Only balance refusals are expected."""

    async def one(request_id: str) -> str | None:
        try:
            await store.admit(
                request_id=request_id,
                account_id=account,
                key_id=key,
                model="m",
                prompt_tokens=10,
                max_tokens=10,
                max_tokens_ceiling=1000,
                input_pm=1000,
                output_pm=2000,
            )
        except BalanceExhausted:
            return None
        return request_id

    return [rid for rid in await asyncio.gather(*(one(i) for i in ids)) if rid is not None]


async def _main(kind: str, nodes: list[tuple[str, int]], job: dict[str, Any]) -> list[str]:
    client = connect(kind, nodes)
    store = QuotaStore(client, timeout_s=None)
    await client.ping()  # connected before the start line
    job["barrier"].wait()
    try:
        return await admit_many(store, job["account"], job["key"], job["ids"])
    finally:
        await client.aclose()


def run(kind: str, nodes: list[tuple[str, int]], job: dict[str, Any]) -> None:
    """Process entry point: the admitted ids go to ``job['results']``."""
    try:
        job["results"].put(asyncio.run(_main(kind, nodes, job)))
    except BaseException as exc:
        job["results"].put(repr(exc))
        raise
