"""Fair shares under overload: while a model's endpoints are full, requests wait in per-account
queues and are let through in weighted fair order, for a bounded time.

A model is *full* when none of its available endpoints has room: an endpoint with
``max_in_flight`` (models.yaml) has room while this process has fewer requests there than
that; one without has room unless its fresh metrics say it is saturated (the router's
``not_saturated`` rule: vLLM's queue or KV cache past the routing thresholds, or a 429 just
now). While a model has room and nobody waits, a request goes on at once: the cost on the
ordinary path is one check.

Otherwise it waits in its account's queue. Each time a request of the model finishes (and
every ``TICK`` seconds while anyone waits, for metrics that cleared), the next turn goes to the
account whose virtual time is least, which then advances by ``1 / weight``: an account of
weight 2 gets twice the turns of one of weight 1 while both wait, and an account that just
arrived starts at the current virtual time (no credit for having been idle). So one tenant
flooding a model fills only its own queue, and a quiet one waits at most about one turn.
After ``queue_seconds`` without a turn the request is refused with 429 ``model_overloaded``
and ``Retry-After``, before anything was reserved, rather than piling onto vLLM's own queue.

The weight is the account's package tier (``weight`` on packages; the control plane writes
the account's current tier to Redis). It is read only when a request has to wait, and cached.
Queues are per data-plane process, as ``max_in_flight`` is: set it to an endpoint's capacity
divided by the number of processes sending to it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.catalog import Model
from gateway.errors import RateLimited
from gateway.routing.config import RoutingConfig
from gateway.routing.router import Router

TICK = 0.05  # seconds between looks at the metrics while requests wait
WEIGHT_CACHE_SECONDS = 10.0

Weigh = Callable[[str], Awaitable[int]]  # an account's weight (its package tier)


class Turn:
    """A request's place among those a model is serving; ``release`` once, when it ends."""

    __slots__ = ("_account", "_queue", "released")

    def __init__(self, queue: ModelQueue | None, account: str = "") -> None:
        self._queue = queue
        self._account = account
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self._queue is not None:
                self._queue.finished(self._account)


FREE = Turn(None)  # fair shares off: nothing to give back


class ModelQueue:
    """One model's turns: how many are out (and whose), who waits, each account's virtual time.

    ``keep`` turns are kept for accounts with none out (``routing.newcomer_slots``): an
    account already sending to the model may not take the model's last ``keep`` free turns,
    so a quiet tenant starts at once instead of waiting for a flood's request to end."""

    def __init__(self, model: Model, has_room: Callable[[Model, int], bool], keep: int = 0) -> None:
        self.model = model
        self._has_room = has_room
        self.keep = keep
        self.out = 0  # turns given and not yet released
        self.running: dict[str, int] = {}  # turns out, by account
        self.waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self.vtime: dict[str, float] = {}
        self.weight: dict[str, int] = {}
        self.now_v = 0.0  # the virtual time of the last turn given
        self._ticking: asyncio.TimerHandle | None = None

    def room_for(self, account: str) -> bool:
        keep = self.keep if self.keep and self.running.get(account) else 0
        return self._has_room(self.model, self.out + keep)

    def take(self, account: str) -> Turn:
        self.out += 1
        self.running[account] = self.running.get(account, 0) + 1
        return Turn(self, account)

    def finished(self, account: str) -> None:
        self.out -= 1
        left = self.running.get(account, 1) - 1
        if left > 0:
            self.running[account] = left
        else:
            self.running.pop(account, None)
        self.dispatch()

    def enqueue(self, account: str, weight: int) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self.waiting.get(account)
        if queue is None:
            queue = self.waiting[account] = deque()
            self.vtime[account] = max(self.vtime.get(account, 0.0), self.now_v)  # no banked credit
        self.weight[account] = weight
        queue.append(waiter)
        self._tick()
        return waiter

    def forget(self, account: str, waiter: asyncio.Future[None]) -> None:
        """A waiter that gave up (timed out, client gone)."""
        queue = self.waiting.get(account)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self.waiting[account]

    def dispatch(self) -> None:
        """Give turns while the model has room: the least virtual time first, among the
        accounts that may take the turn (see ``keep``)."""
        while self.waiting:
            account = min((a for a in self.waiting if self.room_for(a)), key=self.vtime.__getitem__,
                          default=None)
            if account is None:
                return
            queue = self.waiting[account]
            waiter = queue.popleft()
            if not queue:
                del self.waiting[account]
            if waiter.done():  # cancelled meanwhile
                continue
            self.now_v = self.vtime[account]
            self.vtime[account] += 1.0 / self.weight.get(account, 1)
            self.take(account)
            waiter.set_result(None)

    def _tick(self) -> None:
        if self._ticking is None:
            self._ticking = asyncio.get_running_loop().call_later(TICK, self._on_tick)

    def _on_tick(self) -> None:
        self._ticking = None
        self.dispatch()
        if self.waiting:
            self._tick()


class FairShares:
    """The process's model queues (see the module)."""

    def __init__(self, router: Router, weigh: Weigh, config: RoutingConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.router = router
        self._queues: dict[str, ModelQueue] = {}
        self.configure(config)
        self._weigh = weigh
        self._clock = clock
        self._weights: dict[str, tuple[float, int]] = {}  # account -> (fetched at, weight)
        self.timeouts = 0

    def configure(self, config: RoutingConfig) -> None:
        """models.yaml's routing settings (at start and on each reload)."""
        self.enabled = config.fair_shares
        self.queue_seconds = config.queue_seconds
        self.keep = config.newcomer_slots
        for queue in self._queues.values():
            queue.keep = self.keep

    async def turn(self, model: Model, account: str) -> Turn:
        """A turn to send ``model`` a request for ``account``: at once while there is room
        and nobody waits; else after a fair wait; else 429 ``model_overloaded``."""
        if not self.enabled:
            return FREE
        queue = self._queues.get(model.name)
        if queue is None:
            queue = self._queues[model.name] = ModelQueue(model, self.router.has_room, self.keep)
        if not queue.waiting and queue.room_for(account):
            return queue.take(account)
        weight = await self._weight(account)
        waiter = queue.enqueue(account, weight)
        queue.dispatch()  # a turn may be free already (room came back since the last look)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_seconds)
        except TimeoutError:
            queue.forget(account, waiter)
            if not waiter.done() or waiter.cancelled():
                self.timeouts += 1
                raise RateLimited(
                    f"model '{model.name}' is at capacity; retry shortly",
                    code="model_overloaded",
                    headers={"Retry-After": str(max(1, math.ceil(self.queue_seconds)))},
                ) from None
        except asyncio.CancelledError:  # the client left while waiting
            queue.forget(account, waiter)
            if waiter.done() and not waiter.cancelled():
                queue.finished(account)  # it had just been given a turn: give it on
            raise
        return Turn(queue, account)

    def waiting(self) -> dict[str, int]:
        """Requests waiting, by model (for the metrics)."""
        return {name: sum(len(q) for q in queue.waiting.values()) for name, queue in self._queues.items()}

    async def _weight(self, account: str) -> int:
        now = self._clock()
        cached = self._weights.get(account)
        if cached is not None and now - cached[0] < WEIGHT_CACHE_SECONDS:
            return cached[1]
        try:
            weight = max(1, await self._weigh(account))
        except Exception:  # Redis trouble: wait with the default weight rather than fail
            weight = 1
        if len(self._weights) > 100_000:
            self._weights.clear()
        self._weights[account] = (now, weight)
        return weight


class FairSharesCollector(Collector):
    """``tokengate_queue_waiting{model}`` and ``tokengate_queue_timeouts_total`` at each scrape."""

    def __init__(self, flow: FairShares) -> None:
        self.flow = flow

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("tokengate_queue_waiting",
                                    "Requests waiting for a fair turn at a full model, by model.",
                                    labels=["model"])
        for model, count in sorted(self.flow.waiting().items()):
            waiting.add_metric([model], count)
        yield waiting
        timeouts = CounterMetricFamily("tokengate_queue_timeouts",
                                       "Requests refused (429 model_overloaded) after waiting "
                                       "queue_seconds for a turn.")
        timeouts.add_metric([], self.flow.timeouts)
        yield timeouts
