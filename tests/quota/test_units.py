"""Pure logic of the quota layer: prices, costs, header formats, records and events."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.quota.admission import format_duration, retry_after_seconds
from gateway.quota.pricing import cost, max_completion, price_to_pm
from gateway.quota.reservation import Reservation
from gateway.usage import UsageEvent, iso_to_ms, ms_to_iso


@pytest.mark.parametrize(
    ("prompt", "completion", "in_pm", "out_pm", "expected"),
    [
        (0, 0, 1000, 2000, 0),  # no tokens: free
        (1, 0, 1000, 1000, 1),
        (1, 0, 1, 1, 1),  # a thousandth of a credit rounds up to one
        (1000, 0, 1, 1, 1),
        (1001, 0, 1, 1, 2),
        (10, 5, 500, 2250, 17),  # 5000 + 11250 = 16250 -> 17
        (3, 3, 0, 0, 0),  # a free model
        (2, 0, 500, 0, 1),
    ],
)
def test_cost_rounds_up_in_integers(
    prompt: int, completion: int, in_pm: int, out_pm: int, expected: int
) -> None:
    result = cost(prompt, completion, in_pm, out_pm)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("bad", [-1, 1.0, True, Decimal(1)])
def test_cost_refuses_what_is_not_a_count(bad: object) -> None:
    with pytest.raises(ValueError):
        cost(bad, 0, 1000, 1000)  # type: ignore[arg-type]


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**5), st.integers(1, 10**5))
def test_max_completion_is_the_most_the_balance_pays(
    available: int, prompt: int, in_pm: int, out_pm: int
) -> None:
    granted = max_completion(available, prompt, in_pm, out_pm)
    if granted >= 0:
        assert cost(prompt, granted, in_pm, out_pm) <= available
        assert cost(prompt, granted + 1, in_pm, out_pm) > available
    else:
        assert cost(prompt, 0, in_pm, out_pm) > available


@pytest.mark.parametrize(
    ("price", "pm"),
    [
        ("1", 1000),
        ("0.5", 500),
        ("2.25", 2250),
        ("0.001", 1),
        (0.5, 500),
        (2, 2000),
        (Decimal("1.100"), 1100),
        ("0", 0),
        (2.25, 2250),
    ],
)
def test_price_to_pm(price: str | int | float | Decimal, pm: int) -> None:
    assert price_to_pm(price) == pm


@pytest.mark.parametrize("price", ["0.0001", "-1", "abc", "nan", "inf", True, 0.1234])
def test_price_to_pm_refuses(price: object) -> None:
    with pytest.raises(ValueError):
        price_to_pm(price)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (20, "20ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (8640, "8.64s"),
        (60_000, "1m0s"),
        (360_000, "6m0s"),
        (90_500, "1m30.5s"),
        (3_600_000, "1h0m0s"),
    ],
)
def test_reset_durations_as_openai_writes_them(ms: int, text: str) -> None:
    assert format_duration(ms) == text


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after_seconds(ms) for ms in (0, 1, 999, 1000, 1001)] == [1, 1, 1, 1, 2]


def test_iso_times_round_trip_in_integers() -> None:
    assert ms_to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert ms_to_iso(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert iso_to_ms("2023-11-14T22:13:20.123Z") == 1_700_000_000_123
    assert iso_to_ms("2023-11-15T00:13:20.123+02:00") == 1_700_000_000_123


def make_event(**changes: object) -> UsageEvent:
    fields: dict[str, object] = dict(
        request_id="req-1",
        account_id="acct",
        key_id="key",
        model="m|odd",
        cluster="wuhan",
        endpoint="http://127.0.0.1:9001",
        prompt_tokens=10,
        completion_tokens=5,
        cached_tokens=2,
        charge=20,
        status="ok",
        counted_by="upstream",
        stream=True,
        started_at_ms=1_700_000_000_000,
        finished_at_ms=1_700_000_000_250,
    )
    fields.update(changes)
    return UsageEvent(**fields)  # type: ignore[arg-type]


def test_usage_event_round_trips_through_stream_fields() -> None:
    event = make_event()
    fields = event.to_fields()
    assert fields["stream"] == "1" and fields["charge"] == "20"
    assert UsageEvent.from_fields(fields) == event
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    assert UsageEvent.from_fields({**as_bytes, b"newer_field": b"x"}) == event
    record = event.to_record()
    assert record["started_at"] == "2023-11-14T22:13:20.000Z"
    assert "started_at_ms" not in record


def test_uncollected_is_an_optional_integer_of_the_event_and_its_record() -> None:
    event = make_event(uncollected=12)
    fields = event.to_fields()
    assert fields["uncollected"] == "12" and UsageEvent.from_fields(fields) == event
    assert event.to_record()["uncollected"] == 12
    del fields["uncollected"]  # written before the field existed
    assert UsageEvent.from_fields(fields).uncollected == 0
    with pytest.raises(ValueError):
        UsageEvent.from_fields({**fields, "uncollected": "1.5"})


@pytest.mark.parametrize(
    "changes", [{"status": "done"}, {"counted_by": "guess"}, {"charge": -1}, {"uncollected": -1}]
)
def test_usage_event_refuses_unknown_values(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_event(**changes)


def test_usage_event_needs_every_field() -> None:
    fields = make_event().to_fields()
    del fields["charge"]
    with pytest.raises(ValueError, match="charge"):
        UsageEvent.from_fields(fields)


def test_reservation_record_keeps_a_model_with_bars() -> None:
    raw = b"30|10|20|1000|1000|1700000000000|0|-1|30|28333333|0|key|g1:25,g2:5|a|b"
    res = Reservation.decode(raw)
    assert (res.reserve, res.max_tokens, res.key_id, res.model) == (30, 20, "key", "a|b")
    assert res.allocation == (("g1", 25), ("g2", 5))
    assert res.checkpoint_prompt is None and not res.key_cap
    assert Reservation.decode(raw.replace(b"|0|key|", b"|1|key|")).key_cap
    assert Reservation.decode(raw.replace(b"g1:25,g2:5", b"")).allocation == ()
