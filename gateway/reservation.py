"""A request's reservation from admission to settlement: the one object that owns its life.

Admission reserved credits in Redis; from then on the request holds a
:class:`HeldReservation`. It renews the lease every lease/3 (it is a
:class:`~gateway.lease.LeaseKeeper`), each renewal a checkpoint of what the relay generated
so far (the reaper's charge should this gateway die), and it settles exactly once, with the
outcome the relay returned, in a task that outlives the request: nothing that ends the
request (a client gone, a server stopping) cuts settlement short. What every reservation of
a process shares (the quota store, the metrics, the settlements still under way) is its
:class:`ReservationDesk`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.auth import KeyRef
from gateway.catalog import Model
from gateway.errors import QuotaUnavailable
from gateway.lease import LeaseKeeper, Progress
from gateway.metrics import GatewayMetrics
from gateway.quota.store import Charged, QuotaStore
from gateway.relay.outcome import Outcome

log = logging.getLogger("tokengate.reservation")


class ReservationDesk:
    """Where a process's reservations checkpoint and settle; ``drain`` waits for the last
    settlements at shutdown."""

    def __init__(self, quota: QuotaStore, metrics: GatewayMetrics, lease_seconds: float,
                 progress_seconds: float = 1.0) -> None:
        self.quota = quota
        self.metrics = metrics
        self.lease_ms = int(lease_seconds * 1000)
        self.renew_every = lease_seconds / 3
        self.progress_every = progress_seconds  # how stale a checkpoint of a live stream may be
        self.retry_for = lease_seconds * 10  # a deferred settlement's retries; then the reaper's
        self.settling: set[asyncio.Future[None]] = set()  # settlements under way (or retrying)

    def hold(self, key: KeyRef, model: Model, request_id: str, stream: bool) -> HeldReservation:
        """The admitted request's reservation; its lease is renewed from now on."""
        return HeldReservation(self, key, model, request_id, stream)

    async def settle(self, key: KeyRef, model: Model, request_id: str, stream: bool,
                     outcome: Outcome) -> None:
        """Settle now; if Redis is unreachable, keep retrying.

        Never raises: the response is already with the client. Should this process die
        before Redis returns, the reservation's lease expires and the reaper settles it.
        Credits the balance could not pay (the actual cost beyond the reservation, past
        what was available) are counted and logged: never unbilled silently.
        """
        usage = outcome.usage
        endpoint = outcome.endpoint
        charge = functools.partial(
            self.quota.settle,
            request_id=request_id,
            account_id=key.account_id,
            key_id=key.key_id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            status=outcome.status,
            counted_by=outcome.counted_by,
            stream=stream,
            cluster=endpoint.cluster if endpoint else "",
            endpoint=endpoint.url if endpoint else "",
        )
        try:
            charged = await charge()
        except QuotaUnavailable:
            log.warning("settlement of %s deferred: Redis unreachable", request_id)
            charged = await self._settle_later(request_id, charge)
        except Exception:
            log.exception("settlement of %s failed; its lease will expire it", request_id)
            return
        if charged is None:
            return  # already settled (or given up on: the reaper settles it)
        if charged.uncollected > 0:
            self.metrics.unpaid(model.name, charged.uncollected)
            log.warning("request %s: %d credits uncollected (actual cost above the reservation, "
                        "balance exhausted)", request_id, charged.uncollected)
        self.metrics.billed(model.name, usage.prompt_tokens, usage.completion_tokens)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the settlements under way (retrying included)."""
        if self.settling:
            await asyncio.wait(self.settling, timeout=timeout)

    async def _settle_later(
        self, request_id: str, settle: Callable[[], Awaitable[Charged | None]]
    ) -> Charged | None:
        delay = 0.1
        deadline = time.monotonic() + self.retry_for
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                charged = await settle()
            except QuotaUnavailable:
                continue
            log.warning("deferred settlement of %s done", request_id)
            return charged
        log.error("gave up settling %s; its lease will expire it", request_id)
        return None


class HeldReservation(LeaseKeeper):
    """One admitted request's reservation: renewed and checkpointed while the request runs
    (a relay sees it as :class:`~gateway.lease.Checkpointed`), settled once when it ends."""

    __slots__ = ("_desk", "_key", "_model", "_request_id", "_stream", "settled")

    def __init__(self, desk: ReservationDesk, key: KeyRef, model: Model, request_id: str,
                 stream: bool) -> None:
        super().__init__(None, desk.renew_every, desk.progress_every)
        self._desk = desk
        self._key = key
        self._model = model
        self._request_id = request_id
        self._stream = stream
        self.settled = False

    async def renew(self, progress: Progress | None) -> bool:
        """Renew the lease, recording what was generated (the reaper's charge). Redis being
        unreachable is no reason to break a paid request: the next renewal retries."""
        completion, prompt = progress() if progress is not None else (0, None)
        desk, key = self._desk, self._key
        try:
            return await desk.quota.checkpoint(
                request_id=self._request_id, account_id=key.account_id, key_id=key.key_id,
                completion_tokens=completion, prompt_tokens=prompt, lease_ms=desk.lease_ms,
            )
        except QuotaUnavailable:
            log.warning("checkpoint of %s skipped: Redis unreachable", self._request_id)
            return True

    def settle(self, outcome: Outcome) -> None:
        """End the reservation with what the request used: no more renewals, and the
        settlement under way in a task of the desk's (``drain`` waits for it). Once only."""
        self.stop()
        if self.settled:
            return
        self.settled = True
        desk = self._desk
        task = asyncio.ensure_future(
            desk.settle(self._key, self._model, self._request_id, self._stream, outcome))
        desk.settling.add(task)
        task.add_done_callback(desk.settling.discard)
