"""The measurement behind docs/models-yaml.md's byte-bound table runs and holds its shape."""

from __future__ import annotations

from loadtest.byte_bound import main, measure


def test_every_sample_is_bounded_and_english_costs_most() -> None:
    rows = {name: (tokens, bound) for name, _chars, tokens, bound in measure()}
    assert all(tokens < bound for tokens, bound in rows.values())
    ratio = {name: bound / tokens for name, (tokens, bound) in rows.items()}
    assert ratio["English prose"] > 4 > ratio["Chinese prose"] > ratio["digits (CSV)"] > 1
    assert main([]) == 0
