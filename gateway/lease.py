"""Keeping a reservation's lease alive for as long as its request runs.

The reaper settles a reservation whose lease has passed as ``expired``: its gateway is
presumed dead. A live request must therefore renew its lease, whatever it is waiting for:
a stream's first byte (queueing, prefill), a whole non-streamed answer (which comes only
after the whole generation), or a stream's next chunk. Each renewal is a checkpoint: once a
stream relays, its ``progress`` (tokens delivered so far) goes along, which is what the reaper
charges should this gateway die. A renewal that finds the reservation gone marks the keeper
``lost``: the relay stops there.

It renews every lease/3 from a timer: a request that ends sooner costs one timer and no
Redis call. A request's reservation (:class:`gateway.reservation.HeldReservation`) is a
keeper; a relay sees it only as :class:`Checkpointed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("tokengate.lease")

Progress = Callable[[], tuple[int, int | None]]  # completion tokens so far, prompt if reported
Renew = Callable[[Progress | None], Awaitable[bool]]  # False: the reservation is gone


class Checkpointed(Protocol):
    """The reservation a relay runs under, as the relay sees it: the relay points
    ``progress`` at its count (what each checkpoint records) and stops once ``lost``."""

    progress: Progress | None
    lost: bool


class LeaseKeeper:
    __slots__ = ("_every", "_loop", "_renew", "_task", "_timer", "lost", "progress")

    def __init__(self, renew: Renew | None, every: float) -> None:
        self._renew = renew  # None: a subclass overrides renew()
        self._every = every
        self.progress: Progress | None = None  # set by the relay once tokens flow
        self.lost = False  # the reservation was found gone (expired): stop relaying
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(every, self._due)

    def _due(self) -> None:
        self._timer = None
        self._task = asyncio.ensure_future(self._run())

    async def renew(self, progress: Progress | None) -> bool:
        """One renewal; False when the reservation is gone. A subclass renews by itself
        (a bound method of its own kept here would make every keeper a reference cycle)."""
        assert self._renew is not None
        return await self._renew(progress)

    async def _run(self) -> None:
        try:
            alive = await self.renew(self.progress)
        except Exception:  # Redis trouble: the lease may still hold; try again next time
            log.warning("lease renewal failed; retrying in %.1fs", self._every, exc_info=True)
            alive = True
        self.lost = not alive
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
