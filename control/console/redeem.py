"""``/console/redeem``: a code's package granted to the session's organization, once.

The same service and the same limit on failed attempts as ``POST /v1/me/redeem``
(``billing.codes_api.codes_of``: one ``CodeService`` per process, counting failures per
account and per client address as ``control.client_address`` tells it). Every refusal is a
message next to the **Code** field with the API's status (404, 409, 429, 503), never a 500.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from billing.code_format import MAX_TYPED
from billing.codes_api import codes_of
from billing.errors import Conflict
from billing.users import Session
from control.client_address import request_bucket
from control.console.pages import words
from control.console.web import billing_of, form_of, in_organization, render
from gateway.contract import NotFound, QuotaUnavailable, RateLimited

router = APIRouter()
SessionDep = Annotated[Session, Depends(in_organization)]
MESSAGES = {
    "code_not_found": "c_code_not_found",
    "code_expired": "c_code_expired",
    "code_redeemed": "c_code_redeemed",
}


def _page(request: Request, session: Session, status: int = 200, **context: object) -> Response:
    return render(request, "redeem.html", session=session, status=status, **context)


@router.get("/redeem")
async def redeem_page(request: Request, session: SessionDep) -> Response:
    return _page(request, session, values={})


@router.post("/redeem")
async def redeem(request: Request, session: SessionDep) -> Response:
    form, t = await form_of(request, session), words(request)
    typed = form.get("code", "").strip()
    assert session.account_id is not None
    values = {"code": typed[:MAX_TYPED]}
    if not typed:
        return _page(request, session, 400, values=values, errors={"code": t("c_enter_code")})
    if len(typed) > MAX_TYPED:
        return _page(request, session, 400, values=values, errors={"code": t("c_code_too_long")})
    codes = codes_of(request, billing_of(request))
    try:
        grant = await codes.redeem(session.account_id, typed, request_bucket(request))
    except (NotFound, Conflict) as error:
        message = t(MESSAGES.get(error.code or "", "c_code_not_found"))
        return _page(request, session, error.status, values=values, errors={"code": message})
    except RateLimited as error:
        seconds = error.headers.get("Retry-After", "60")
        response = _page(
            request, session, 429, values=values, errors={"code": t("c_too_many_tries", seconds=seconds)}
        )
        response.headers["Retry-After"] = seconds
        return response
    except QuotaUnavailable:
        return _page(request, session, 503, values=values, errors={"code": t("c_try_later")})
    return _page(request, session, values={}, grant=grant)
