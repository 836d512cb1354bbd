"""Money as people read it: integer minor units shown in their currency's major unit."""

from __future__ import annotations

# ISO 4217 currencies whose minor unit is not 1/100 (the rest: two decimals).
_EXPONENT = {
    "JPY": 0,
    "KRW": 0,
    "VND": 0,
    "CLP": 0,
    "ISK": 0,
    "UGX": 0,
    "XAF": 0,
    "XOF": 0,
    "BHD": 3,
    "KWD": 3,
    "OMR": 3,
    "JOD": 3,
    "TND": 3,
    "IQD": 3,
    "LYD": 3,
}


def display(amount: int, currency: str) -> str:
    """``4900, "CNY"`` -> ``"49.00 CNY"``; exact (integer arithmetic, no float)."""
    code = currency.upper()
    exponent = _EXPONENT.get(code, 2)
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    if exponent == 0:
        return f"{sign}{amount} {code}"
    major, minor = divmod(amount, 10**exponent)
    return f"{sign}{major}.{minor:0{exponent}d} {code}"
