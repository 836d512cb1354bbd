"""Sign up, sign in, sign out.

Sign-up makes an organization (an account), its owner and grants the trial package once;
sign-ups are limited per client address (``TOKENGATE_SIGNUPS_PER_HOUR``), so that a script
cannot farm trial credits;
sign-in checks the argon2 hash and is limited per email and per client address (failed
attempts only, ``billing.code_attempts``); both forms carry a CSRF token before any session
exists (a double-submit cookie, ``tg_csrf``). The session cookie is HttpOnly, SameSite=Lax,
Secure behind TLS, and scoped to ``/console``.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from billing.code_attempts import FailureLimiter
from billing.errors import Conflict
from billing.users import SESSION_MS
from control.client_address import request_bucket
from control.console.i18n import translate
from control.console.web import (
    SESSION_COOKIE,
    form_of,
    language,
    redirect,
    render,
    safe_next,
    secure_cookies,
    session_of,
    users_of,
)
from gateway.contract import BadRequest, RateLimited, Settings

router = APIRouter()
CSRF_COOKIE = "tg_csrf"
SIGN_IN_FAILURES_PER_ADDRESS = 100  # per 15 minutes (per email: 10, as for codes)


def _limiter(request: Request) -> FailureLimiter:
    return FailureLimiter(
        request.app.state.redis,
        kind="signinfail",
        what="sign-ins",
        code="too_many_sign_ins",
        address_limit=SIGN_IN_FAILURES_PER_ADDRESS,
    )


def _form_page(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """A sign-in or sign-up page with a CSRF token bound to the browser's ``tg_csrf`` cookie."""
    token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(request, template, status=status, csrf=token, **context)
    response.set_cookie(
        CSRF_COOKIE, token, httponly=True, samesite="strict", path="/console", secure=secure_cookies(request)
    )
    return response


def _signed_in(request: Request, token: str, target: str) -> Response:
    response = redirect(target)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_MS // 1000,
        httponly=True,
        samesite="lax",
        path="/console",
        secure=secure_cookies(request),
    )
    return response


@router.get("/signup")
async def signup_page(request: Request) -> Response:
    return _form_page(request, "signup.html", values={})


def _signups(request: Request) -> FailureLimiter:
    """Sign-ups counted per client address (and per email, which can only succeed once)."""
    settings: Settings = request.app.state.settings
    return FailureLimiter(
        request.app.state.redis,
        settings.signups_per_hour,
        3_600_000,
        kind="signup",
        what="sign-ups",
        code="too_many_sign_ups",
    )


@router.post("/signup")
async def signup(request: Request) -> Response:
    form = await form_of(request, None)
    values = {k: form.get(k, "") for k in ("email", "organization")}
    users, limiter, bucket = users_of(request), _signups(request), request_bucket(request)
    email = form.get("email", "").strip().lower()[:320]
    try:
        await limiter.check(email, bucket)
    except RateLimited as error:
        seconds = error.headers.get("Retry-After", "60")
        message = translate(language(request), "too_many_signups", seconds=seconds)
        response = _form_page(request, "signup.html", status=429, values=values, errors={"form": message})
        response.headers["Retry-After"] = seconds
        return response
    try:
        user = await users.sign_up(
            form.get("email", ""), form.get("password", ""), form.get("organization", "")
        )
    except (BadRequest, Conflict) as error:
        return _form_page(
            request, "signup.html", status=400, values=values, errors={error.param or "form": error.message}
        )
    await limiter.failed(email, bucket)  # counts a sign-up made (the limiter counts any event)
    return _signed_in(request, await users.start_session(user), "/console")


@router.get("/signin")
async def signin_page(request: Request) -> Response:
    if await session_of(request) is not None:
        return redirect(safe_next(request.query_params.get("next")))
    return _form_page(request, "signin.html", values={}, next=safe_next(request.query_params.get("next")))


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await form_of(request, None)
    email, target = form.get("email", "").strip().lower()[:320], safe_next(form.get("next"))
    limiter, bucket = _limiter(request), request_bucket(request)
    context = {"values": {"email": email}, "next": target}
    try:
        await limiter.check(email, bucket)
    except RateLimited as error:
        seconds = error.headers.get("Retry-After", "60")
        message = translate(language(request), "too_many_signins", seconds=seconds)
        response = _form_page(request, "signin.html", status=429, errors={"form": message}, **context)
        response.headers["Retry-After"] = seconds
        return response
    users = users_of(request)
    user = await users.authenticate(email, form.get("password", ""))
    if user is None:
        await limiter.failed(email, bucket)
        message = translate(language(request), "bad_credentials")
        return _form_page(request, "signin.html", status=400, errors={"form": message}, **context)
    return _signed_in(request, await users.start_session(user), target)


@router.post("/signout")
async def signout(request: Request) -> Response:
    session = await session_of(request)
    if session is not None:
        await form_of(request, session)
    await users_of(request).end_session(request.cookies.get(SESSION_COOKIE))
    response = redirect("/console/signin")
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response
