"""Fixtures of the relay's in-process tier (see scripted.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.relay.scripted import Upstream, scripted_upstream


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with scripted_upstream() as scripted:
        yield scripted
