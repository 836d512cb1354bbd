"""The **Create key** form read into a name and ``KeyLimits``, each refusal a message for its
field. Bounds are the admin API's (``billing.api.NewKey``), plus upper limits so a huge
number is a message, not a database error."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from control.console.pages import FieldError, whole_number
from gateway.contract import CreditLimit, KeyLimits

MAX_RATE = 2**31 - 1
MAX_CAP = 2**50
PERIODS = ("day", "month", "total")


@dataclass
class KeyForm:
    name: str = ""
    limits: KeyLimits = field(default_factory=KeyLimits)
    errors: dict[str, str] = field(default_factory=dict)


def read_key_form(
    form: dict[str, str], chosen_models: Sequence[str], catalog: Sequence[str], t: Callable[..., str]
) -> KeyForm:
    """The name and limits of the form; ``errors`` maps each bad field to its message."""
    out = KeyForm(name=form.get("name", "").strip())
    if not 1 <= len(out.name) <= 200 or not out.name.isprintable():
        out.errors["name"] = t("c_enter_name")
    models = sorted(set(chosen_models))
    unknown = [m for m in models if m not in catalog]
    if unknown:
        out.errors["models"] = t("c_unknown_model", name=unknown[0][:100])
    numbers: dict[str, int | None] = {}
    for name in ("rpm", "tpm", "max_concurrency"):
        try:
            numbers[name] = whole_number(form.get(name, ""), name, 1, MAX_RATE, t)
        except FieldError as error:
            out.errors[name] = error.message
    cap: CreditLimit | None = None
    period = form.get("cap_period", "")
    try:
        credits = whole_number(form.get("cap_credits", ""), "cap_credits", 1, MAX_CAP, t)
    except FieldError as error:
        out.errors["cap_credits"], credits = error.message, None
    if (period and period not in PERIODS) or (credits is not None and not period):
        out.errors["cap_period"] = t("c_pick_period")
    elif period and credits is None and "cap_credits" not in out.errors:
        out.errors["cap_credits"] = t("c_cap_without_credits")
    elif credits is not None:
        cap = CreditLimit(credits, period)  # type: ignore[arg-type]  # one of PERIODS
    out.limits = KeyLimits(
        models or None,
        numbers.get("rpm"),
        numbers.get("tpm"),
        numbers.get("max_concurrency"),
        credit_limit=cap,
    )
    return out
