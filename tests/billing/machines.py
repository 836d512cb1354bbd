"""The base of billing's hypothesis state machines: one event loop, one Redis client and one
Billing on the test's ledger (a ManualClock the rules move), closed at teardown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import ClassVar, TypeVar

from hypothesis.stateful import RuleBasedStateMachine
from redis.asyncio import Redis

from billing.service import Billing

from .helpers import ManualClock

T = TypeVar("T")


class BillingMachine(RuleBasedStateMachine):
    ledger_url: ClassVar[str] = ""  # set by the test on a subclass of its own
    redis_port: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = Redis(port=self.redis_port)
        self.clock = ManualClock()
        self.billing = Billing.build(self.ledger_url, self.redis, self.clock)

    def run(self, aw: Awaitable[T]) -> T:
        return self.loop.run_until_complete(aw)

    def teardown(self) -> None:
        self.run(self.billing.close())
        self.run(self.redis.aclose())
        self.loop.close()
