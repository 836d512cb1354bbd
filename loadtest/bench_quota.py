"""Cost of metering per request: one admission + one settlement script against real Redis.

    python -m loadtest.bench_quota [--redis-url URL] [--requests N] [--concurrency C]

Reports wall time and the *client* CPU per request (the gateway's share; Redis runs in
its own process). The client CPU, not the round trip, is what metering costs a gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

from gateway.quota.store import QuotaStore
from gateway.state import connect_redis


async def _one(store: QuotaStore, account: str, key: str, index: int) -> None:
    request_id = f"bench-{index}"
    await store.admit(
        request_id=request_id, account_id=account, key_id=key, model="m", prompt_tokens=50,
        max_tokens=64, max_tokens_ceiling=4000, input_pm=1000, output_pm=2000, lease_ms=30_000,
    )
    await store.settle(
        request_id=request_id, account_id=account, key_id=key, prompt_tokens=40,
        completion_tokens=64, cached_tokens=0, status="ok", counted_by="upstream", stream=True,
        cluster="c", endpoint="http://e",
    )


async def run(redis_url: str, requests: int, concurrency: int) -> dict[str, float]:
    client = connect_redis(redis_url)
    store = QuotaStore(client)
    account, key = "bench_" + secrets.token_hex(4), "kbench_" + secrets.token_hex(4)
    await store.init_balance(account)
    await store.credit(account, 10**12)
    await store.set_key_record(account, key)
    await _one(store, account, key, -1)  # load scripts, open connections
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(i: int) -> None:
        async with semaphore:
            await _one(store, account, key, i)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(bounded(i) for i in range(requests)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await client.aclose()
    return {
        "requests": requests,
        "concurrency": concurrency,
        "client_cpu_us_per_request": cpu / requests * 1e6,
        "wall_us_per_request": wall / requests * 1e6,
        "requests_per_s": requests / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    import uvloop

    for concurrency in args.concurrency:
        result = uvloop.run(run(args.redis_url, args.requests, concurrency))
        print(
            f"admit+settle, concurrency {concurrency:>3}: "
            f"{result['client_cpu_us_per_request']:7.1f} us client CPU/request, "
            f"{result['wall_us_per_request']:7.1f} us wall/request, "
            f"{result['requests_per_s']:8.0f} requests/s"
        )


if __name__ == "__main__":
    main()
