"""Where alerts run, as operators start them: ``tokengate billing alerts --once`` (cron) and the
alert task of ``tokengate billing worker``, each delivering to a real receiver."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from billing.alert_settings import write_settings
from billing.service import Billing
from tests.redis_servers import RedisServer
from tests.support.processes import billing_command, start_billing_worker, stop_process

from .alert_receiver import Receiver, verify
from .helpers import Pack, funded

pytestmark = pytest.mark.timeout(120)


async def receiving(billing: Billing, receiver: Receiver) -> tuple[str, str]:
    """A new account whose balance is at its threshold, alerts to ``receiver``: (account, secret)."""
    who = await funded(billing, [Pack(10)])
    settings = await write_settings(
        billing.engine,
        who.account_id,
        {"url": receiver.url, "low_balance": 10},
        rotate_secret=False,
        allow_private=True,
        now_ms=billing.clock(),
    )
    return who.account_id, settings["secret"]


def events_for(receiver: Receiver, account_id: str, secret: str) -> list[dict[str, object]]:
    """The account's events the receiver got, each checked as the receivers' guide says."""
    found = []
    for got in receiver:
        event = orjson.loads(got.body)
        if event["account_id"] == account_id:
            assert verify(got.body, got.headers["tokengate-signature"], secret, time.time())
            found.append(event)
    return found


async def test_one_pass_from_the_cli(
    billing: Billing, redis_server: RedisServer, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENGATE_ALERTS_ALLOW_PRIVATE", "1")
    with Receiver() as receiver:
        account_id, secret = await receiving(billing, receiver)
        done = await asyncio.to_thread(billing_command, redis_server.url, ledger_url, "alerts", "--once")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("alerts: ") and "raised" in done.stdout
        (event,) = events_for(receiver, account_id, secret)
        assert event["type"] == "balance.low"
        again = await asyncio.to_thread(billing_command, redis_server.url, ledger_url, "alerts", "--once")
        assert (
            again.returncode == 0 and len(events_for(receiver, account_id, secret)) == 1
        )  # raised and sent once


async def test_the_billing_worker_raises_and_delivers_alerts(
    billing: Billing,
    redis_server: RedisServer,
    ledger_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("TOKENGATE_ALERTS_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("TOKENGATE_ALERT_INTERVAL", "0.2")
    with Receiver() as receiver:
        account_id, secret = await receiving(billing, receiver)
        worker = start_billing_worker(redis_server.url, ledger_url, tmp_path / "worker.log")
        try:
            deadline = time.monotonic() + 60
            while not events_for(receiver, account_id, secret):
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                await asyncio.sleep(0.1)
        finally:
            stop_process(worker)
        assert worker.returncode == 0, (tmp_path / "worker.log").read_text()  # stopped cleanly, alerts too
        assert len(events_for(receiver, account_id, secret)) == 1
