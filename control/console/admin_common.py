"""What every admin page shares: the admin session dependency, the audit line of a console
write (``admin:<email>``, as the admin door records ``admin``), and form values read without
ever raising: a bad number or an id no account could have is an error shown, never a 500."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response

from billing import audit
from billing.users import Session
from control.console import admin_words  # noqa: F401  (registers the admin pages' words)
from control.console.i18n import translate
from control.console.web import admin_session, billing_of, language, render

AdminSession = Annotated[Session, Depends(admin_session)]


def actor(session: Session) -> str:
    return f"admin:{session.user.email}"


async def audited(
    request: Request, session: Session, action: str, target: str, detail: dict[str, Any]
) -> None:
    """One audit line for a console write, in a transaction of its own (after the change)."""
    billing = billing_of(request)
    await audit.record_now(
        billing.engine,
        at_ms=billing.clock(),
        actor=actor(session),
        action=action,
        target=target,
        detail=detail,
    )


def words(request: Request, key: str, **values: object) -> str:
    return translate(language(request), key, **values)


def plain_id(value: str | None) -> bool:
    """Could this be one of our ids? (PostgreSQL refuses a NUL; ids are short and printable.)"""
    return value is not None and 0 < len(value) <= 64 and value.isprintable()


def whole(
    request: Request,
    form: dict[str, str],
    name: str,
    errors: dict[str, str],
    *,
    low: int,
    high: int,
    required: bool = True,
) -> int | None:
    """The form's ``name`` as an integer in [low, high]; None (and ``errors[name]``) otherwise."""
    raw = form.get(name, "").strip()
    if not raw:
        if required:
            errors[name] = words(request, "adm_required")
        return None
    try:
        value = int(raw)
    except ValueError:
        errors[name] = words(request, "adm_whole")
        return None
    if not low <= value <= high:
        errors[name] = words(request, "adm_whole_range", low=low, high=high)
        return None
    return value


def text(request: Request, form: dict[str, str], name: str, errors: dict[str, str], limit: int) -> str:
    """The form's ``name`` trimmed; required, printable and at most ``limit`` characters."""
    value = form.get(name, "").strip()
    if not value or len(value) > limit or not value.isprintable():
        errors[name] = (
            words(request, "adm_required") if not value else words(request, "adm_not_valid", limit=limit)
        )
    return value


def day_param(request: Request, name: str, errors: dict[str, str]) -> str | None:
    """A ``YYYY-MM-DD`` query parameter (checked), or None when absent."""
    value = request.query_params.get(name, "").strip()
    if not value:
        return None
    try:
        date.fromisoformat(value)
    except ValueError:
        value = ""
    if len(value) != 10:
        errors[name] = words(request, "adm_bad_date")
        return None
    return value


def not_found(request: Request, session: Session) -> Response:
    message = words(request, "adm_not_found")
    return render(request, "message.html", session=session, status=404, title="404", message=message)
