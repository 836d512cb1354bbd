"""Keeping a reservation's lease alive for as long as its request runs.

The reaper settles a reservation whose lease has passed as ``expired``: its gateway is
presumed dead. A live request must therefore renew its lease, whatever it is waiting for:
a stream's first byte (queueing, prefill), a whole non-streamed answer (which comes only
after the whole generation), or a stream's next chunk. The relay loop renews it too, with the
tokens delivered so far; the keeper makes sure that silence alone never lets it lapse.

It renews every lease/3 from a timer: a request that ends sooner costs one timer and no
Redis call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("tokengate.lease")

Renew = Callable[[], Awaitable[bool]]  # False: the reservation is gone (settled or expired)


class LeaseKeeper:
    __slots__ = ("_every", "_loop", "_renew", "_task", "_timer")

    def __init__(self, renew: Renew, every: float) -> None:
        self._renew = renew
        self._every = every
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(every, self._due)

    def _due(self) -> None:
        self._timer = None
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            alive = await self._renew()
        except Exception:  # Redis trouble: the lease may still hold; try again next time
            log.warning("lease renewal failed; retrying in %.1fs", self._every, exc_info=True)
            alive = True
        if alive and self._task is not None:
            self._timer = self._loop.call_later(self._every, self._due)

    def stop(self) -> None:
        """No more renewals (the request is over: settlement takes it from here)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
