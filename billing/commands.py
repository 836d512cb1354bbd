"""What ``tokengate billing worker | reconcile | migrate | alerts`` run (its arguments: launcher/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from billing.alert_runner import AlertRunner
from billing.db import migrate
from billing.db.engine import create_engine
from billing.reconcile import Reconciler
from billing.service import Billing
from billing.worker import BillingWorker, WorkerOptions
from gateway.contract import Settings, connect_redis


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    command = {"worker": _worker, "reconcile": _reconcile, "migrate": _migrate, "alerts": _alerts}
    return asyncio.run(command[args.billing_command](args, Settings()))


async def _worker(args: argparse.Namespace, settings: Settings) -> int:
    redis = connect_redis(settings.redis_url)
    billing = Billing.build(settings.database_url, redis, create_ledger=False)
    await billing.prepare()
    options = WorkerOptions(
        batch=args.batch or WorkerOptions.batch,
        block_ms=args.block_ms,
        claim_idle_ms=args.claim_idle_ms,
        max_deliveries=args.max_deliveries,
        linger_s=args.linger_ms / 1000,
    )
    worker = BillingWorker(redis, billing.engine, consumer=args.consumer, options=options)
    alerts = AlertRunner.of(billing, settings)  # a task of its own, beside the record loop
    loop = asyncio.get_running_loop()

    def stop() -> None:
        worker.stop()
        alerts.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop)
    logging.getLogger("tokengate.billing").info("billing worker %s started", worker.streams.consumer)
    alerting = asyncio.create_task(alerts.run()) if settings.alert_interval_s > 0 else None
    try:
        await worker.run()
    finally:
        alerts.stop()
        if alerting is not None:  # a pass in a slow receiver's timeout is cut (its rows come back)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(alerting, 15)
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


async def _alerts(args: argparse.Namespace, settings: Settings) -> int:
    """One alert pass (``--once``: for cron and tests), or passes every interval until stopped."""
    redis = connect_redis(settings.redis_url)
    billing = Billing.build(settings.database_url, redis)
    runner = AlertRunner.of(billing, settings)
    try:
        if args.once:
            try:
                print((await runner.run_once()).line())
            except Exception as error:  # the database or Redis: say so in one line, exit 1
                print(f"alert pass failed: {error.__class__.__name__}: {error}", file=sys.stderr)
                return 1
        else:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, runner.stop)
            runner.interval_s = runner.interval_s or 60.0
            await runner.run()
    finally:
        await billing.close()
        await redis.aclose()
    return 0
