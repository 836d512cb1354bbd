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
