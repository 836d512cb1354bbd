"""The console's plumbing: templates, the session of a request, CSRF, cookies, language.

Every page is rendered on the server from ``templates/`` (Jinja2, autoescaped) with the
session, the language and ``t()`` (control/console/i18n.py); scripts and styles are files of
this package under ``/console/static`` (nothing from a CDN). Every POST form carries the
session's CSRF token (``csrf``), checked in constant time before the form is acted on; a
form without it is refused (403). Responses forbid framing and third-party content (CSP).
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from billing.service import Billing
from billing.users import Session, UserService
from control.api_reference import code_spans
from control.console.i18n import LANGUAGES, pick_language, translate
from gateway.contract import GatewayError, Settings

SESSION_COOKIE = "tg_session"
LANG_COOKIE = "tg_lang"
MAX_FORM_FIELDS = 100
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
templates = Environment(
    loader=PackageLoader("control.console", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["code_spans"] = code_spans  # the API reference's descriptions


class SignInRequired(Exception):
    """No live session: the browser goes to the sign-in page (and back afterwards)."""


class Forbidden(Exception):
    """Signed in, but this page is not for this user (a member on an admin page)."""


class CsrfFailed(Exception):
    """A form posted without this session's CSRF token."""


class BadForm(Exception):
    """A body that is no form of ours (too many fields)."""


def billing_of(request: Request) -> Billing:
    billing: Billing = request.app.state.billing
    return billing


def users_of(request: Request) -> UserService:
    return billing_of(request).users


def language(request: Request) -> str:
    chosen = request.query_params.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return pick_language(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


async def session_of(request: Request) -> Session | None:
    return await users_of(request).session(request.cookies.get(SESSION_COOKIE))


async def signed_in(request: Request) -> Session:
    """The request's session (a FastAPI dependency); SignInRequired otherwise."""
    session = await session_of(request)
    if session is None:
        raise SignInRequired()
    return session


async def in_organization(request: Request) -> Session:
    """A session with an organization in view (customers' pages); admins without one go to admin."""
    session = await signed_in(request)
    if session.account_id is None:
        raise Forbidden()
    return session


async def admin_session(request: Request) -> Session:
    session = await signed_in(request)
    if not session.user.is_admin:
        raise Forbidden()
    return session


async def form_of(request: Request, session: Session | None) -> dict[str, str]:
    """The urlencoded form (the body was bounded by the control plane), its CSRF token checked
    against the session's (no session: the pre-sign-in token of the ``tg_csrf`` cookie)."""
    body = (await request.body()).decode("utf-8", "replace")
    try:
        fields = dict(parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS))
    except ValueError:  # more fields than any form of ours has
        raise BadForm() from None
    expected = session.csrf if session is not None else request.cookies.get("tg_csrf", "")
    if not expected or not hmac.compare_digest(fields.get("csrf", "").encode(), expected.encode()):
        raise CsrfFailed()
    return fields


def secure_cookies(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    public = settings.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


def render(
    request: Request, template: str, *, session: Session | None = None, status: int = 200, **context: Any
) -> HTMLResponse:
    lang = language(request)
    settings: Settings = request.app.state.settings
    page = templates.get_template(template).render(
        request=request,
        session=session,
        lang=lang,
        path=request.url.path,
        t=lambda key, **values: translate(lang, key, **values),
        settings=settings,
        **context,
    )
    response = HTMLResponse(page, status_code=status, headers=HEADERS)
    if request.query_params.get("lang") in LANGUAGES:
        response.set_cookie(
            LANG_COOKIE,
            lang,
            max_age=365 * 86400,
            samesite="lax",
            path="/console",
            secure=secure_cookies(request),
        )
    return response


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def sign_in_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/console/signin?next=" + quote(target, safe="")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if target and target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console"


def error_message(request: Request, error: GatewayError) -> str:
    return error.message


async def on_sign_in_required(request: Request, _: SignInRequired) -> Response:
    return redirect(sign_in_url(request))


async def on_forbidden(request: Request, _: Forbidden) -> Response:
    session = await session_of(request)
    if session is not None and session.user.is_admin and session.account_id is None:
        return redirect("/console/admin")
    return render(
        request,
        "message.html",
        session=session,
        status=403,
        title="403",
        message="This page is not available to you.",
    )


async def on_csrf_failed(request: Request, _: CsrfFailed) -> Response:
    session = await session_of(request)
    return render(
        request,
        "message.html",
        session=session,
        status=403,
        title="403",
        message=translate(language(request), "csrf_failed"),
    )


async def on_bad_form(request: Request, _: BadForm) -> Response:
    session = await session_of(request)
    return render(request, "message.html", session=session, status=400, title="400",
                  message=translate(language(request), "bad_form"))
