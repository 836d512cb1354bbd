"""A real vLLM simulator (subprocess, ttft 0, itl 0) for the load generator's smoke tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from loadtest.bench.procs import Child
from loadtest.bench.stack import start_simulator


@dataclass
class Sim:
    child: Child
    url: str  # root, no /v1

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def fault(self, **spec: object) -> None:
        httpx.post(self.url + "/sim/faults", json=spec, timeout=5).raise_for_status()


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    child, url = start_simulator(tmp_path_factory.mktemp("sim"))
    try:
        yield Sim(child, url)
    finally:
        child.stop()


@pytest.fixture(autouse=True)
def _clear_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "sim" in request.fixturenames:
        request.getfixturevalue("sim").fault(mode="none")
