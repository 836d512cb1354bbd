"""Keeping a reservation's lease alive for as long as its request runs.

The reaper settles a reservation whose lease has passed as ``expired``: its gateway is
presumed dead. A live request must therefore renew its lease, whatever it is waiting for:
a stream's first byte (queueing, prefill), a whole non-streamed answer (which comes only
after the whole generation), or a stream's next chunk. Each renewal is a checkpoint: once a
stream relays, its ``progress`` (tokens delivered so far) goes along, which is what the reaper
charges should this gateway die. A renewal that finds the reservation gone marks the keeper
``lost``: the relay stops there.

It renews every lease/3 from a timer: a request that ends sooner costs one timer and no
Redis call. Between renewals, a timer every ``progress_every`` (1 s by default) checkpoints
the progress early when it moved: a gateway SIGKILLed mid-stream is then billed for what its
clients received give or take that second, not up to a third of a lease short. A request
shorter than that, or one whose upstream is still thinking, costs no extra Redis call. A
request's reservation (:class:`gateway.reservation.HeldReservation`) is a keeper; a relay
sees it only as :class:`Checkpointed`.
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
    __slots__ = ("_every", "_loop", "_recorded", "_renew", "_renewed_at", "_task", "_tick", "_timer",
                 "lost", "progress")

    def __init__(self, renew: Renew | None, every: float, progress_every: float | None = None) -> None:
        self._renew = renew  # None: a subclass overrides renew()
        self._every = every  # the lease's renewal period
        self._tick = min(every, progress_every) if progress_every else every
        self.progress: Progress | None = None  # set by the relay once tokens flow
        self.lost = False  # the reservation was found gone (expired): stop relaying
        self._loop = asyncio.get_running_loop()
        self._renewed_at = self._loop.time()
        self._recorded: tuple[int, int | None] = (0, None)  # the progress last checkpointed
        self._task: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(self._tick, self._due)

    def _due(self) -> None:
        self._timer = None
        progress = self.progress
        current = progress() if progress is not None else self._recorded
        # A renewal when the lease wants one; else a checkpoint only if the progress moved.
        # (Half a tick of slack: a timer may fire a little early.)
        if current == self._recorded and self._loop.time() - self._renewed_at < self._every - self._tick / 2:
            self._timer = self._loop.call_later(self._tick, self._due)
            return
        self._task = asyncio.ensure_future(self._run(current))

    async def renew(self, progress: Progress | None) -> bool:
        """One renewal; False when the reservation is gone. A subclass renews by itself
        (a bound method of its own kept here would make every keeper a reference cycle)."""
        assert self._renew is not None
        return await self._renew(progress)

    async def _run(self, current: tuple[int, int | None]) -> None:
        try:
            alive = await self.renew((lambda: current) if self.progress is not None else None)
            self._recorded = current
            self._renewed_at = self._loop.time()
        except Exception:  # Redis trouble: the lease may still hold; try again next time
            log.warning("lease renewal failed; retrying in %.1fs", self._tick, exc_info=True)
            alive = True
        self.lost = not alive
        if alive and self._task is not None:
            self._timer = self._loop.call_later(self._tick, self._due)

    def stop(self) -> None:
        """No more renewals (the request is over: settlement takes it from here)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
