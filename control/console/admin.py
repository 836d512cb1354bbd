"""The admin pages of the console (``/console/admin``), for platform admins only.

Every page depends on ``admin_session`` (a customer gets 403, before any form is read);
every write is a POST form with the session's CSRF token, made through the same services as
the JSON admin API and recorded in the audit log as ``admin:<email>``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from control.console import admin_accounts, admin_commerce, admin_endpoints, admin_records
from control.console.admin_common import AdminSession
from control.console.web import render

router = APIRouter(prefix="/admin")
router.include_router(admin_accounts.router)
router.include_router(admin_endpoints.router)
router.include_router(admin_commerce.router)
router.include_router(admin_records.router)


@router.get("")
async def dashboard(request: Request, session: AdminSession) -> Response:
    return render(request, "admin/dashboard.html", session=session)
