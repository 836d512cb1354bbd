"""Prices and costs in integers: the Python twin of the arithmetic in the Lua scripts.

A model's price multipliers (``1``, ``0.5``, ``2.25``) are held as integer per-mille
(1000 = 1 credit per token), so no float ever touches money. The scripts compute the same
:func:`cost` in Redis; billing and the tests use this one. Keep them identical.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

PER_MILLE = 1000


def cost(prompt_tokens: int, completion_tokens: int, input_pm: int, output_pm: int) -> int:
    """Credits for a request: ``ceil((prompt*input_pm + completion*output_pm) / 1000)``.

    Rounds up so that a request never costs less than its tokens at the listed price; a
    request that produced no tokens costs 0.
    """
    for name, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
        ("input_pm", input_pm),
        ("output_pm", output_pm),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    units = prompt_tokens * input_pm + completion_tokens * output_pm
    return -(-units // PER_MILLE)


def max_completion(available: int, prompt_tokens: int, input_pm: int, output_pm: int) -> int:
    """The most completion tokens ``available`` credits pay for after the prompt.

    ``cost(p, g) <= available`` holds exactly when ``p*in + g*out <= 1000*available``, hence
    the floor below. Negative means even the prompt is unaffordable; a free output price
    gives no limit (the caller's ceiling applies), reported as a very large number.
    """
    room = available * PER_MILLE - prompt_tokens * input_pm
    if output_pm == 0:
        return -1 if room < 0 else 2**62
    return room // output_pm


def price_to_pm(price: str | int | float | Decimal) -> int:
    """A price multiplier (at most three decimals) as integer per-mille: ``"2.25"`` -> 2250.

    Floats (YAML reads ``0.5`` as one) go through their shortest decimal text, never through
    float arithmetic; more than three decimals or a negative price is an error.
    """
    if isinstance(price, bool):
        raise ValueError(f"not a price: {price!r}")
    text = repr(price) if isinstance(price, float) else str(price)
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValueError(f"not a price: {price!r}") from exc
    if not value.is_finite() or value < 0:
        raise ValueError(f"a price must be a finite non-negative number, not {price!r}")
    scaled = value * PER_MILLE
    if scaled != scaled.to_integral_value():
        raise ValueError(f"a price has at most three decimals, not {price!r}")
    return int(scaled)
