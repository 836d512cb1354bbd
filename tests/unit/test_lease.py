"""The lease keeper: renews on a timer until stopped, or until the reservation is gone."""

from __future__ import annotations

import asyncio

from gateway.lease import LeaseKeeper, Progress


async def test_renews_every_period_until_stopped() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def renew(progress: Progress | None) -> bool:
        calls.append(loop.time())
        return True

    keeper = LeaseKeeper(renew, 0.02)
    await asyncio.sleep(0.11)
    keeper.stop()
    seen = len(calls)
    assert 3 <= seen <= 6
    await asyncio.sleep(0.06)
    assert len(calls) == seen  # stopped: no more


async def test_a_request_shorter_than_a_period_never_renews() -> None:
    calls = 0

    async def renew(progress: Progress | None) -> bool:
        nonlocal calls
        calls += 1
        return True

    keeper = LeaseKeeper(renew, 0.05)
    await asyncio.sleep(0.01)
    keeper.stop()
    await asyncio.sleep(0.08)
    assert calls == 0


async def test_gone_reservation_stops_and_failures_retry() -> None:
    answers = [RuntimeError("redis hiccup"), True, False, True]
    calls = 0

    async def renew(progress: Progress | None) -> bool:
        nonlocal calls
        assert progress is not None and progress() == (7, None)
        answer = answers[calls]
        calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    keeper = LeaseKeeper(renew, 0.01)
    keeper.progress = lambda: (7, None)  # what a relay reports: delivered so far
    await asyncio.sleep(0.1)
    keeper.stop()
    assert calls == 3  # a failure is retried; False (settled or expired) ends the renewals
    assert keeper.lost  # and tells the relay to stop


async def test_progress_is_checkpointed_each_tick_only_when_it_moved() -> None:
    """Between lease renewals (every 1 s here), a tick every 0.02 s checkpoints the progress
    if it moved since the last checkpoint, and does nothing if it did not."""
    seen: list[tuple[int, int | None]] = []

    async def renew(progress: Progress | None) -> bool:
        assert progress is not None
        seen.append(progress())
        return True

    keeper = LeaseKeeper(renew, 1.0, progress_every=0.02)
    delivered = 0
    keeper.progress = lambda: (delivered, None)
    await asyncio.sleep(0.07)
    assert seen == []  # nothing delivered yet: no call (the lease is good for a second)
    delivered = 5
    await asyncio.sleep(0.05)
    assert seen == [(5, None)]  # one checkpoint of the new figure, not one per tick
    delivered = 9
    await asyncio.sleep(0.05)
    keeper.stop()
    assert seen == [(5, None), (9, None)]


async def test_the_lease_is_renewed_even_when_nothing_moves() -> None:
    calls = 0

    async def renew(progress: Progress | None) -> bool:
        nonlocal calls
        calls += 1
        return True

    keeper = LeaseKeeper(renew, 0.06, progress_every=0.02)
    await asyncio.sleep(0.2)
    keeper.stop()
    assert 2 <= calls <= 4  # every lease period (0.06 s), not every tick
