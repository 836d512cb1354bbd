"""The customers' pages' rules that need no process: when the overview warns, how form
numbers are read, what the charts escape and say."""

from __future__ import annotations

import pytest

from billing.clock import DAY_MS, ms_to_iso
from billing.records import GrantBalance, Totals
from control.console.charts import bar_chart
from control.console.key_form import read_key_form
from control.console.overview import expiring, is_low, month_start_ms
from control.console.pages import FieldError, ModelInfo, per_mille, whole_number


def t(key: str, **values: object) -> str:
    return key + (repr(sorted(values.items())) if values else "")


def totals(available: int, purchased: int) -> Totals:
    return {
        "purchased": purchased,
        "available": available,
        "reserved": 0,
        "spent": purchased - available,
        "expired": 0,
    }


def grant(available: int, until_ms: int | None) -> GrantBalance:
    return {
        "id": "g",
        "package_id": "p",
        "credits": 100,
        "remaining": available,
        "available": available,
        "reserved": 0,
        "spent": 100 - available,
        "expired": 0,
        "models": None,
        "valid_from": None,
        "valid_until": ms_to_iso(until_ms) if until_ms else None,
    }


def test_low_is_the_alert_threshold_else_a_tenth_of_purchases() -> None:
    assert is_low(totals(99, 1000), None) and not is_low(totals(100, 1000), None)
    assert not is_low(totals(0, 0), None)  # nothing ever bought: no banner
    assert is_low(totals(499, 1000), 500) and not is_low(totals(500, 1000), 500)


def test_expiring_means_credits_left_within_seven_days() -> None:
    now = 1_700_000_000_000
    found = expiring(
        [
            grant(5, now + 6 * DAY_MS),
            grant(5, now + 8 * DAY_MS),
            grant(0, now + DAY_MS),
            grant(5, now - 1),
            grant(5, None),
        ],
        now,
    )
    assert found == [{"credits": 5, "date": ms_to_iso(now + 6 * DAY_MS)[:10]}]
    assert ms_to_iso(month_start_ms(now)) == "2023-11-01T00:00:00.000Z"  # now: 2023-11-14


@pytest.mark.parametrize("text", ["x", "-1", "0", "1.5", "1e3", "٣", "9" * 25, "2147483648"])
def test_whole_numbers_refuse_what_is_not_one_in_range(text: str) -> None:
    with pytest.raises(FieldError) as caught:
        whole_number(text, "rpm", 1, 2**31 - 1, t)
    assert caught.value.field == "rpm"


def test_whole_numbers_read_blank_as_none() -> None:
    assert whole_number("  ", "rpm", 1, 10, t) is None and whole_number(" 7 ", "rpm", 1, 10, t) == 7


def test_the_key_form_reads_limits_and_a_cap() -> None:
    form = read_key_form(
        {"name": " ci ", "tpm": "500", "cap_credits": "9", "cap_period": "day"}, ["m", "m"], ["m"], t
    )
    assert form.errors == {} and form.name == "ci"
    assert form.limits.models == ["m"] and form.limits.tpm == 500 and form.limits.rpm is None
    assert form.limits.credit_limit is not None and form.limits.credit_limit.period == "day"


def test_charts_escape_labels_and_tell_their_values() -> None:
    svg = str(bar_chart("Credits <by model>", "a 3, b 0", ["<script>", "b"], [3, 0]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'class="chart"' in svg and 'role="img"' in svg and "<desc" in svg and "a 3, b 0" in svg
    assert svg.count('class="bar"') == 2


def test_prices_as_models_yaml_writes_them() -> None:
    assert [per_mille(v) for v in (1000, 500, 2250, 0, 1)] == ["1", "0.5", "2.25", "0", "0.001"]
    assert ModelInfo("m", "chat", 1, 1000, 2000).cost(10, 3) == 16
    assert ModelInfo("m", "chat", 1, 1, 1).cost(1, 0) == 1 and ModelInfo("m", "chat", 1, 1, 1).cost(0, 0) == 0
