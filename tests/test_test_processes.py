"""The test support's process starters survive losing a picked port to another process."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import processes


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port held as the source port of a connection, as an outgoing connection holds one."""
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client.bind(("127.0.0.1", 0))
        client.connect(server.getsockname())
        yield int(client.getsockname()[1])


def test_simulators_start_again_on_another_port_when_theirs_was_taken(
    taken_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race CI lost once: the port picked free was taken (by an outgoing connection's
    source port) before the simulator bound it, and the simulator exited."""
    picks = iter([[taken_port]])
    free = processes.free_ports
    monkeypatch.setattr(processes, "free_ports", lambda n: next(picks, None) or free(n))
    log = tmp_path / "sims.log"
    sims = processes.start_sims(1, "org/M", log=log)
    try:
        assert sims.ports[0] != taken_port
        assert httpx.get(sims.url(0) + "/v1/models", timeout=5).status_code == 200
        assert b"address already in use" in log.read_bytes().lower()  # the first try lost it
    finally:
        sims.stop()


def test_a_simulator_failing_otherwise_is_not_retried(tmp_path: Path) -> None:
    log = tmp_path / "sims.log"
    with pytest.raises(RuntimeError, match="exited"):
        processes.start_sims(1, "org/M", "--no-such-option", log=log)
    assert log.read_text().count("--no-such-option") == 1


def test_ports_picked_together_are_distinct() -> None:
    """Picked one at a time, two picks can be the same port (CI once gave a simulator the same
    port twice); picked together they never are."""
    for _ in range(200):
        ports = processes.free_ports(4)
        assert len(set(ports)) == 4
