"""``/console/keys``: the organization's API keys; **Create key** (name, optional limits) shows
the new secret once; revoking asks for a confirmation on a page of its own (no script).

Members may create and revoke keys. The account is always the session's: a key id from a
URL must belong to it, or the answer is 404 (exactly as for a key that does not exist).
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from billing.directory import list_keys
from billing.records import ApiKey
from billing.users import Session
from control.console.key_form import KeyForm, read_key_form
from control.console.pages import models_of, not_found, plausible_id, words
from control.console.web import MAX_FORM_FIELDS, billing_of, form_of, in_organization, redirect, render

router = APIRouter()
SessionDep = Annotated[Session, Depends(in_organization)]


async def _page(request: Request, session: Session, status: int = 200, **context: Any) -> Response:
    assert session.account_id is not None
    keys = await list_keys(billing_of(request).engine, session.account_id) or []
    catalog = [m.name for m in models_of(request)]
    context.setdefault("values", {})
    return render(request, "keys.html", session=session, status=status, keys=keys, catalog=catalog, **context)


async def _own_key(request: Request, session: Session, key_id: str) -> ApiKey | None:
    """The live key ``key_id`` if it is the session's organization's, else None."""
    if not plausible_id(key_id):
        return None
    key = await billing_of(request).accounts.get_key(key_id)
    return key if key is not None and key["account_id"] == session.account_id else None


@router.get("/keys")
async def keys_page(request: Request, session: SessionDep) -> Response:
    return await _page(request, session)


@router.post("/keys")
async def create_key(request: Request, session: SessionDep) -> Response:
    form = await form_of(request, session)
    body = (await request.body()).decode("utf-8", "replace")
    chosen = [v for k, v in parse_qsl(body, max_num_fields=MAX_FORM_FIELDS) if k == "models"]
    catalog = [m.name for m in models_of(request)]
    parsed: KeyForm = read_key_form(form, chosen, catalog, words(request))
    if parsed.errors:
        values = {
            k: form.get(k, "")[:200]
            for k in ("name", "rpm", "tpm", "max_concurrency", "cap_credits", "cap_period")
        }
        values["models"] = chosen  # type: ignore[assignment]
        return await _page(request, session, 400, values=values, errors=parsed.errors)
    assert session.account_id is not None
    issued = await billing_of(request).accounts.create_key(session.account_id, parsed.name, parsed.limits)
    return await _page(request, session, 201, issued=issued)


@router.get("/keys/{key_id}/revoke")
async def revoke_page(key_id: str, request: Request, session: SessionDep) -> Response:
    key = await _own_key(request, session, key_id)
    if key is None:
        return not_found(request, session, "c_key_not_found")
    return render(request, "revoke.html", session=session, key=key)


@router.post("/keys/{key_id}/revoke")
async def revoke(key_id: str, request: Request, session: SessionDep) -> Response:
    await form_of(request, session)
    key = await _own_key(request, session, key_id)
    if key is None:
        return not_found(request, session, "c_key_not_found")
    await billing_of(request).accounts.revoke_key(key["id"])
    return redirect("/console/keys")
