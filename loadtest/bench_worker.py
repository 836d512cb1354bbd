"""CPU the billing worker spends per usage event, measured on its own process.

    python -m loadtest.bench_worker [--events N] [--accounts A] [--batch B]

A private redis-server on a free port and a fresh SQLite ledger (migrated, with funded
accounts) in a temporary directory; ``tokengate billing worker`` runs as a child process
and is left to settle (imports, migration check, group creation) before the measurement,
so only the draining counts. Then N events shaped as ``settle_v4.lua`` writes them (most
paid by one grant, some split over two) go onto the accounts' shard streams, and the
worker's user+system CPU (``/proc/<pid>/stat``) from before the first XADD until the
streams are drained is divided by N.

To profile the drain, ``--attach`` a sampler to the worker, e.g.
``--attach "$VENV/bin/py-spy record --pid {pid} --format raw --nonblocking -o /tmp/w.txt"``
or ``--attach "perf record -g -p {pid} -o /tmp/w.perf"``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from sqlalchemy import func, select

from billing.db.schema import ledger_legs, usage_records
from billing.packages import NewPackage
from billing.service import Billing
from billing.streams import backlog
from billing.worker import WorkerOptions
from gateway import keyspace
from gateway.accounts import KeyLimits
from gateway.quota.keys import BILLING_GROUP
from loadtest.bench.procs import Child, spawn
from loadtest.bench.stack import child_env, start_redis
from loadtest.loadgen.procstat import sample

CREDITS = 10**12


@dataclass(frozen=True)
class Payer:
    account_id: str
    key_id: str
    grants: tuple[str, str]


def cpu_s(child: Child) -> float:
    """User + system CPU seconds of the worker (and of any process it started)."""
    return sample((child.pid,)).cpu_seconds


def written(pid: int) -> int:
    """Bytes the process has written (``wchar`` of /proc/<pid>/io: the WAL, checkpoints)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


async def fund(billing: Billing, accounts: int) -> list[Payer]:
    """Accounts with one key and two grants each, on the ledger (and the private Redis)."""
    new = NewPackage(name="bench", credits=CREDITS, valid_days=30)
    package, _ = await billing.packages.create_package(new)
    payers = []
    for index in range(accounts):
        account = await billing.accounts.create_account(f"bench-{index}")
        key = await billing.accounts.create_key(account["id"], "k", KeyLimits())
        grants = [
            (await billing.packages.purchase(account["id"], package["id"], f"order-{index}-{n}"))[0]["id"]
            for n in range(2)
        ]
        payers.append(Payer(account["id"], key["id"], (grants[0], grants[1])))
    return payers


def event_fields(payer: Payer, rng: random.Random, now_ms: int) -> dict[str, str]:
    """One usage event as settle_v4.lua XADDs it (every value a string, plus ``epoch``)."""
    prompt, completion = rng.randint(20, 2000), rng.randint(1, 800)
    charge = prompt + 2 * completion
    first, second = payer.grants
    if rng.random() < 0.1:  # the soonest-expiring grant ran out mid-charge
        split = rng.randint(1, charge - 1)
        grants = f"{first}:{split},{second}:{charge - split}"
    else:
        grants = f"{first}:{charge}"
    return {
        "request_id": "chatcmpl-" + secrets.token_hex(12),
        "account_id": payer.account_id,
        "key_id": payer.key_id,
        "model": "bench-model",
        "cluster": "bench",
        "endpoint": "http://127.0.0.1:8001/v1",
        "prompt_tokens": str(prompt),
        "completion_tokens": str(completion),
        "cached_tokens": str(rng.choice((0, 0, 0, prompt // 2))),
        "charge": str(charge),
        "uncollected": "0",
        "status": "ok",
        "counted_by": rng.choice(("upstream", "upstream", "gateway")),
        "stream": rng.choice(("0", "1")),
        "started_at_ms": str(now_ms - rng.randint(50, 5000)),
        "finished_at_ms": str(now_ms),
        "grants": grants,
        "epoch": "1",
    }


async def fill(redis: Redis, payers: list[Payer], events: int, seed: int, rate: float) -> None:
    """XADD ``events`` events to the payers' shard streams, pipelined: all at once (a
    backlog), or ``rate`` a second in 20 ms steps (a gateway settling steadily)."""
    rng = random.Random(seed)
    step = max(1, round(rate / 50)) if rate > 0 else 1000
    started = time.monotonic()
    for start in range(0, events, step):
        if rate > 0:
            await asyncio.sleep(max(0.0, started + start / rate - time.monotonic()))
        now_ms = int(time.time() * 1000)
        pipe = redis.pipeline(transaction=False)
        for _ in range(start, min(events, start + step)):
            payer = rng.choice(payers)
            stream = keyspace.usage_stream_key(keyspace.shard_of(payer.account_id))
            pipe.xadd(stream, event_fields(payer, rng, now_ms))  # type: ignore[arg-type]
        await pipe.execute()


async def wait_group(redis: Redis, worker: Child) -> None:
    """Until the worker created its group on every stream (it is up and reading)."""
    deadline = time.monotonic() + 60
    for stream in keyspace.all_usage_streams():
        while True:
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{worker.log_tail()}")
            if await redis.exists(stream):
                groups = await redis.xinfo_groups(stream)
                if any(g["name"] in (BILLING_GROUP, BILLING_GROUP.encode()) for g in groups):
                    break
            await asyncio.sleep(0.1)


async def drained(redis: Redis, worker: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await backlog(redis):
        if not worker.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not drain the streams:\n{worker.log_tail()}")
        await asyncio.sleep(0.05)


async def check_ledger(billing: Billing, events: int) -> None:
    """Every event recorded once, and the legs sum to zero."""
    async with billing.engine.connect() as conn:
        records = (await conn.execute(select(func.count()).select_from(usage_records))).scalar_one()
        total = (await conn.execute(select(func.coalesce(func.sum(ledger_legs.c.amount), 0)))).scalar_one()
    if records != events or total != 0:
        raise RuntimeError(f"ledger: {records} records for {events} events, legs sum to {total}")


def start_worker(workdir: Path, redis_url: str, database_url: str, batch: int) -> Child:
    args = [sys.executable, "-m", "launcher.cli", "billing", "worker", "--consumer", "bench",
            "--batch", str(batch)]
    env = child_env(REDIS_URL=redis_url, DATABASE_URL=database_url)
    return spawn("worker", args, workdir / "worker.log", env=env)


def start_profiler(workdir: Path, command: str, worker: Child) -> Child:
    """A profiler attached to the worker (``{pid}`` in ``command``), stopped by SIGINT."""
    args = shlex.split(command.replace("{pid}", str(worker.pid)))
    child = spawn("profiler", args, workdir / "profiler.log")
    time.sleep(1.0)  # let it attach before the events arrive
    return child


async def measure(workdir: Path, args: argparse.Namespace) -> None:
    redis_child, redis_url = start_redis(workdir)
    database_url = f"sqlite:///{workdir / 'ledger.db'}"
    redis = Redis.from_url(redis_url)
    billing = Billing.build(database_url, redis)
    worker: Child | None = None
    try:
        await billing.prepare()
        payers = await fund(billing, args.accounts)
        worker = start_worker(workdir, redis_url, database_url, args.batch)
        await wait_group(redis, worker)
        await asyncio.sleep(args.settle)
        profiler = start_profiler(workdir, args.attach, worker) if args.attach else None
        before, wrote, started = cpu_s(worker), written(worker.pid), time.monotonic()
        await fill(redis, payers, args.events, args.seed, args.rate)
        await drained(redis, worker, timeout=600)
        cpu, wall = cpu_s(worker) - before, time.monotonic() - started
        wrote = written(worker.pid) - wrote
        if profiler is not None:
            profiler.process.send_signal(signal.SIGINT)  # py-spy and perf write their file
            profiler.process.wait(timeout=60)
        await check_ledger(billing, args.events)
        pace = f"{args.rate:g}/s" if args.rate > 0 else "all at once"
        print(f"events {args.events} ({pace})  accounts {args.accounts}  batch {args.batch}")
        print(f"worker CPU {cpu:.2f} s = {cpu / args.events * 1e6:.0f} us/event; "
              f"wall {wall:.2f} s = {args.events / wall:.0f} events/s; "
              f"wrote {wrote / args.events / 1024:.1f} KiB/event")
    finally:
        if worker is not None:
            worker.stop()
        await billing.close()
        await redis.aclose()
        redis_child.stop()


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--batch", type=int, default=WorkerOptions.batch, help="the worker's --batch")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to let the worker idle first")
    parser.add_argument("--rate", type=float, default=0, help="events a second (0: all at once)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--attach", default=None, metavar="CMD",
                        help="a profiler to run on the worker while it drains, {pid} its pid")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, ledger)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    try:
        asyncio.run(measure(workdir, args))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
