"""What the benchmark drives: an OpenAI base URL plus the processes whose cost is measured."""

from __future__ import annotations

from dataclasses import dataclass, field

from .procs import Child

MODEL = "bench-model"  # served by the simulator and exposed under this name by every target
MAX_TOKENS = 64  # every response has 64 tokens: one stream chunk each, after the role chunk


@dataclass
class Target:
    """One endpoint under test.

    ``server`` is the process tree whose CPU and RSS are reported (for ``direct``, the
    simulator itself); ``aux`` are helpers measured apart, together (tokengate's Redis and
    billing worker).
    """

    name: str
    base_url: str  # http://127.0.0.1:PORT/v1
    api_key: str
    server: Child
    version: str
    setup: str  # how it was started, for the report
    aux: list[Child] = field(default_factory=list)

    @property
    def server_pids(self) -> tuple[int, ...]:
        return (self.server.pid,)

    @property
    def aux_pids(self) -> tuple[int, ...]:
        return tuple(child.pid for child in self.aux)
