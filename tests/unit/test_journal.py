"""The settlement journal keeps each event packed and gives it back as appended."""

from __future__ import annotations

import pytest

from gateway.quota.journal import Journaled, SettlementJournal


def test_bytes_events_are_packed_and_come_back_whole() -> None:
    flat = [b"request_id", b"req_1", b"model", b"org/m", b"cluster", b"", b"charge", b"42"]
    item = Journaled.of("acct", flat)
    assert isinstance(item.packed, bytes)
    assert list(item.flat) == flat
    assert item.fields == {"request_id": "req_1", "model": "org/m", "cluster": "", "charge": "42"}


def test_a_value_holding_nul_or_text_values_are_kept_as_sent() -> None:
    with_nul = [b"model", b"odd\x00name", b"charge", b"1"]
    item = Journaled.of("acct", with_nul)
    assert list(item.flat) == with_nul and item.fields["model"] == "odd\x00name"
    as_text = ["model", "m", "charge", "1"]  # redis-py with decoding on
    assert list(Journaled.of("acct", as_text).flat) == as_text


def test_the_journal_lists_the_shards_it_holds() -> None:
    journal = SettlementJournal()
    assert journal.shards() == []
    journal.record("1700000000000-0", "acct-a", [b"request_id", b"r"])
    assert len(journal) == 1 and len(journal.shards()) == 1


def test_a_full_journal_says_so_once_per_filling(caplog: pytest.LogCaptureFixture) -> None:
    """Past its limit the journal drops its oldest events: that is logged (it once never was)."""
    journal = SettlementJournal(limit=4)
    for i in range(6):
        journal.record(f"1700000000000-{i}", "acct-a", [b"request_id", f"r{i}".encode()])
    assert len(journal) == 4
    assert [r.message for r in caplog.records].count(
        "settlement journal full (4 events): is a billing worker running?") == 1
