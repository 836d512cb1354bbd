"""``tokengate billing worker | reconcile | migrate`` (settings from the environment:
``REDIS_URL``, ``DATABASE_URL``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from billing.db import migrate
from billing.db.engine import create_engine
from billing.reconcile import Reconciler
from billing.service import Billing
from billing.worker import BillingWorker, WorkerOptions
from gateway.contract import Settings, connect_redis


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    billing = sub.add_parser(
        "billing",
        help="the ledger: worker, reconcile, migrate",
        description="The billing ledger. Settings come from the environment: REDIS_URL (default "
        "redis://127.0.0.1:6379/0) and DATABASE_URL (default sqlite:///.tokengate/ledger.db); "
        "the quickstart prints the values of the instance it started.",
    )
    commands = billing.add_subparsers(dest="billing_command", required=True)

    worker = commands.add_parser("worker", help="record the usage streams in the ledger")
    worker.add_argument("--consumer", default=None, help="consumer name (default: host-pid)")
    worker.add_argument("--batch", type=int, default=WorkerOptions.batch,
                        help="entries read per usage stream at a time (one transaction for all)")
    worker.add_argument("--block-ms", type=int, default=1000)
    worker.add_argument(
        "--claim-idle-ms",
        type=int,
        default=30_000,
        help="claim entries another worker held unacked this long",
    )
    worker.add_argument("--max-deliveries", type=int, default=10)
    worker.add_argument(
        "--linger-ms",
        type=int,
        default=200,
        help="after a partial batch, wait this long before reading again (batches the ledger writes)",
    )

    reconcile = commands.add_parser("reconcile", help="compare Redis with the ledger and repair")
    reconcile.add_argument("--dry-run", action="store_true", help="report drift, change nothing")
    reconcile.add_argument("--account", action="append", default=None, help="only these accounts")
    reconcile.add_argument(
        "--grace", type=float, default=10.0, help="seconds to let gateways replay lost usage before a rebuild"
    )

    migrate_cmd = commands.add_parser("migrate", help="migrate the ledger database")
    migrate_cmd.add_argument("--revision", default="head")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    command = {"worker": _worker, "reconcile": _reconcile, "migrate": _migrate}
    return asyncio.run(command[args.billing_command](args, Settings()))


async def _worker(args: argparse.Namespace, settings: Settings) -> int:
    redis = connect_redis(settings.redis_url)
    billing = Billing.build(settings.database_url, redis)
    await billing.prepare()
    options = WorkerOptions(
        batch=args.batch,
        block_ms=args.block_ms,
        claim_idle_ms=args.claim_idle_ms,
        max_deliveries=args.max_deliveries,
        linger_s=args.linger_ms / 1000,
    )
    worker = BillingWorker(redis, billing.engine, consumer=args.consumer, options=options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, worker.stop)
    logging.getLogger("tokengate.billing").info("billing worker %s started", worker.streams.consumer)
    try:
        await worker.run()
    finally:
        await billing.close()
        await redis.aclose()
    return 0


async def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    redis = connect_redis(settings.redis_url)
    billing = Billing.build(settings.database_url, redis)
    try:
        reconciler = Reconciler(billing.store, billing.engine, grace_s=args.grace)
        report = await reconciler.run(apply=not args.dry_run, account_ids=args.account)
    finally:
        await billing.close()
        await redis.aclose()
    for line in report.lines():
        print(line)
    drift = bool(report.drift or report.keys)
    return 1 if report.ledger or (args.dry_run and drift) else 0


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    engine = create_engine(settings.database_url)
    try:
        await migrate.upgrade(engine, args.revision)
        print(f"ledger at revision {await migrate.current(engine)}", file=sys.stderr)
    finally:
        await engine.dispose()
    return 0
