"""The web console (``/console``): customers' and admins' pages, served by the control plane
over the same services as the API (control/console/web.py has the plumbing)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from control.console import admin, auth, customer
from control.console.web import (
    BadForm,
    CsrfFailed,
    Forbidden,
    SignInRequired,
    on_bad_form,
    on_csrf_failed,
    on_forbidden,
    on_sign_in_required,
    redirect,
    session_of,
)

router = APIRouter(prefix="/console", include_in_schema=False)
router.include_router(auth.router)
router.include_router(customer.router)  # overview, buy, redeem, keys, usage, playground, prices
router.include_router(admin.router)  # /console/admin: platform admins only
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@router.get("")
async def home(request: Request) -> Response:
    session = await session_of(request)
    if session is None:
        return redirect("/console/signin")
    if session.account_id is None and session.user.is_admin:
        return redirect("/console/admin")
    return redirect("/console/overview")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The console's own scripts and styles (package files; nothing from a CDN)."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        return Response(status_code=404)
    path = resources.files("control.console") / "static" / name
    if not path.is_file():
        return Response(status_code=404)
    return Response(
        path.read_bytes(),
        media_type=STATIC_TYPES[suffix],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def install(app: FastAPI) -> None:
    """Mount the console and its error pages on the control plane's app."""
    app.include_router(router)
    app.add_exception_handler(SignInRequired, on_sign_in_required)  # type: ignore[arg-type]
    app.add_exception_handler(Forbidden, on_forbidden)  # type: ignore[arg-type]
    app.add_exception_handler(CsrfFailed, on_csrf_failed)  # type: ignore[arg-type]
    app.add_exception_handler(BadForm, on_bad_form)  # type: ignore[arg-type]
