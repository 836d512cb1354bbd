"""``/console/members``: who belongs to the organization. Owners add teammates (an email and a
first password to hand over) as members or owners, and remove them; members only look.

A removal takes effect at once: every request re-reads the session's membership
(``UserService.session``). An organization always keeps an owner.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from billing.clock import ms_to_iso
from billing.errors import Conflict
from billing.users import Role, Session
from control.console import members_words  # noqa: F401 (its words)
from control.console.pages import words
from control.console.web import Forbidden, form_of, in_organization, redirect, render, users_of
from gateway.contract import BadRequest

router = APIRouter()
SessionDep = Annotated[Session, Depends(in_organization)]
ROLES = ("member", "owner")


async def _page(request: Request, session: Session, status: int = 200, **context: Any) -> Response:
    assert session.account_id is not None
    members = [
        {"id": uid, "email": email, "role": role, "since": ms_to_iso(since)[:10]}
        for uid, email, role, since in await users_of(request).members(session.account_id)
    ]
    return render(
        request,
        "members.html",
        session=session,
        status=status,
        members=members,
        values=context.pop("values", {}),
        **context,
    )


@router.get("/members")
async def members_page(request: Request, session: SessionDep) -> Response:
    return await _page(request, session)


@router.post("/members")
async def add_member(request: Request, session: SessionDep) -> Response:
    form, t = await form_of(request, session), words(request)
    if session.role != "owner":
        raise Forbidden()
    assert session.account_id is not None
    chosen = form.get("role", "member")
    role: Role = "owner" if chosen == "owner" else "member"
    values = {"email": form.get("email", "")[:320], "role": role}
    if chosen not in ROLES:
        return await _page(request, session, 400, values=values, errors={"role": t("m_bad_role")})
    try:
        await users_of(request).invite_member(
            session.account_id, form.get("email", ""), form.get("password", ""), role
        )
    except (BadRequest, Conflict) as error:
        return await _page(
            request, session, 400, values=values, errors={error.param or "email": error.message}
        )
    return await _page(request, session, added=values["email"])


@router.post("/members/{user_id}/remove")
async def remove_member(user_id: str, request: Request, session: SessionDep) -> Response:
    await form_of(request, session)
    if session.role != "owner":
        raise Forbidden()
    assert session.account_id is not None
    try:
        removed = await users_of(request).remove_member(session.account_id, user_id[:64])
    except Conflict as error:
        return await _page(request, session, 409, errors={"members": error.message})
    if not removed:
        return await _page(request, session, 404, errors={"members": words(request)("m_not_member")})
    return redirect("/console/members")
