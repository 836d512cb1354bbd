"""A lean, bounded, loopback-only load generator for OpenAI-compatible endpoints.

``python -m loadtest.loadgen --help``; in code, :func:`run_load` with a :class:`LoadSpec`.
"""

from .procstat import ProcSample, sample
from .runner import LoadSpec, run_load
from .stats import Distribution, LoadResult, ServerUsage
from .target import NotLoopbackError, check_loopback

__all__ = [
    "Distribution",
    "LoadResult",
    "LoadSpec",
    "NotLoopbackError",
    "ProcSample",
    "ServerUsage",
    "check_loopback",
    "run_load",
    "sample",
]
