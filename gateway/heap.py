"""Garbage-collector settings for a long-running process (a gateway worker, the billing worker).

At start-up a worker imports FastAPI, pydantic, SQLAlchemy and the tokenizers: a few
hundred thousand objects that live as long as the process. CPython's cyclic collector
walks them again and again while requests allocate, which cost about a tenth of the
gateway's CPU per request under load (perf: ``gc_collect_main`` and its visitors).
Freezing them moves them out of the collector's sight; a larger first generation makes
the collections that remain rarer (request garbage is mostly freed by reference
counting, so few objects survive into a collection).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


def settle_heap() -> None:
    """Collect once, freeze what start-up built, and space out later collections."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
