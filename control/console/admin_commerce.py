"""Admin pages of what is sold: packages (list, create), redemption codes (mint a batch,
list their state) and orders (list by status, refund).

A minted batch's codes are on the answer page only (the ledger keeps their hashes), with the
batch as a CSV link made in the page itself (a ``data:`` URL), so nothing can fetch them again.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from billing.codes import MAX_BATCH, MAX_VALID_DAYS, STATUSES
from billing.codes_api import ISSUED_FIELDS, codes_of, csv_text
from billing.packages import MAX_WEIGHT, NewPackage, PackageChanges
from control.console.admin_common import AdminSession, actor, audited, not_found, plain_id, text, whole, words
from control.console.web import billing_of, form_of, redirect, render
from gateway.contract import BadRequest, GatewayError, NotFound

router = APIRouter()
MAX_CREDITS = 2**50
ORDER_STATUSES = ("pending", "paid", "expired", "refunded")
IDENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MODEL = re.compile(r"^[^,|]{1,200}$")


async def _packages_page(
    request: Request, session: AdminSession, status: int = 200, **extra: Any
) -> Response:
    packages = await billing_of(request).packages.list_packages()
    created, changed = request.query_params.get("created", ""), request.query_params.get("id", "")
    done = request.query_params.get("done", "")
    notice = words(request, "adm_package_created", id=created) if IDENT.match(created) else None
    if done in ("adm_package_on_sale", "adm_package_off_sale") and IDENT.match(changed):
        notice = words(request, done, id=changed)
    values = {"valid_days": "30", "currency": "CNY", "weight": "1"}
    context = {"errors": {}, "values": values, "notice": notice, **extra}
    return render(
        request, "admin/packages.html", session=session, status=status, packages=packages, **context
    )


@router.get("/packages")
async def packages_page(request: Request, session: AdminSession) -> Response:
    return await _packages_page(request, session)


def _new_package(request: Request, form: dict[str, str], errors: dict[str, str]) -> NewPackage | None:
    """The form as a package, or None with ``errors`` by field."""
    package_id = form.get("id", "").strip() or None
    if package_id is not None and not IDENT.match(package_id):
        errors["id"] = words(request, "adm_not_valid", limit=64)
    name = text(request, form, "name", errors, 200)
    credits = whole(request, form, "credits", errors, low=1, high=MAX_CREDITS)
    valid_days = whole(request, form, "valid_days", errors, low=1, high=36_500)
    models = [m.strip() for m in form.get("models", "").split(",") if m.strip()] or None
    if models is not None and not all(MODEL.match(m) and m.isprintable() for m in models):
        errors["models"] = words(request, "adm_not_valid", limit=200)
    amount = whole(request, form, "price_amount", errors, low=0, high=MAX_CREDITS, required=False)
    currency = form.get("currency", "").strip().upper()
    if amount is not None and not re.fullmatch(r"[A-Z]{3}", currency):
        errors["currency"] = words(request, "adm_not_valid", limit=3)
    weight = whole(request, form, "weight", errors, low=1, high=MAX_WEIGHT, required=False)
    if errors or credits is None or valid_days is None:
        return None
    price: Any = {"amount": amount, "currency": currency} if amount is not None else None
    return NewPackage(
        name=name,
        credits=credits,
        valid_days=valid_days,
        models=models,
        id=package_id,
        price=price,
        for_sale=form.get("for_sale") == "on",
        trial=form.get("trial") == "on",
        weight=1 if weight is None else weight,
    )


@router.post("/packages")
async def create_package(request: Request, session: AdminSession) -> Response:
    form = await form_of(request, session)
    errors: dict[str, str] = {}
    new = _new_package(request, form, errors)
    values = {
        k: form.get(k, "")
        for k in (
            "id",
            "name",
            "credits",
            "valid_days",
            "models",
            "price_amount",
            "currency",
            "for_sale",
            "trial",
            "weight",
        )
    }
    if new is None:
        return await _packages_page(request, session, 400, errors=errors, values=values)
    try:
        package, created = await billing_of(request).packages.create_package(new)
    except GatewayError as error:
        field = {"price": "price_amount"}.get(error.param or "", error.param or "form")
        if field not in values:
            field = "form"
        message = words(request, "adm_service_error", message=error.message)
        return await _packages_page(
            request, session, 409 if error.status == 409 else 400, errors={field: message}, values=values
        )
    await audited(
        request,
        session,
        "console.package.create",
        f"package:{package['id']}",
        {"package": dict(package), "created": created},
    )
    return redirect(f"/console/admin/packages?created={quote(package['id'])}")


SALE_CHANGES = {"sell": True, "withdraw": False}  # /packages/{id}/sell and /withdraw


@router.post("/packages/{package_id}/{change}")
async def change_sale(request: Request, package_id: str, change: str, session: AdminSession) -> Response:
    """Put a package on sale (``sell``) or take it off (``withdraw``); its price and content
    as they are."""
    await form_of(request, session)
    for_sale = SALE_CHANGES.get(change)
    if for_sale is None or not plain_id(package_id):
        return not_found(request, session)
    packages = billing_of(request).packages
    try:
        package = await packages.update_package(package_id, PackageChanges(for_sale=for_sale))
    except NotFound:
        return not_found(request, session)
    except BadRequest as error:  # on sale without a price
        message = words(request, "adm_service_error", message=error.message)
        return await _packages_page(request, session, 400, errors={"form": message})
    action = "console.package.on_sale" if for_sale else "console.package.off_sale"
    await audited(request, session, action, f"package:{package_id}", {"package": dict(package)})
    done = "adm_package_on_sale" if for_sale else "adm_package_off_sale"
    return redirect(f"/console/admin/packages?done={done}&id={quote(package_id)}")


async def _codes_page(request: Request, session: AdminSession, status: int = 200, **extra: Any) -> Response:
    errors: dict[str, str] = dict(extra.pop("errors", {}))
    package_id = request.query_params.get("package") or None
    code_status = request.query_params.get("status") or None
    if code_status not in (None, *STATUSES):
        errors["status"], code_status = words(request, "adm_not_valid", limit=10), None
    if package_id is not None and not IDENT.match(package_id):
        errors["package"], package_id = words(request, "adm_not_valid", limit=64), None
    filters = {"package_id": package_id, "status": code_status}
    try:
        page: Any = await codes_of(request, billing_of(request)).list_codes(
            package_id=package_id,
            status=code_status,  # one of STATUSES (checked above)
            limit=100,
            cursor=request.query_params.get("cursor") or None,
        )
    except BadRequest as error:
        errors["cursor"], page = error.message, {"data": [], "next_cursor": None}
    packages = await billing_of(request).packages.list_packages()
    context = {"values": {}, "batch": None, **extra}
    params = {"package": package_id, "status": code_status}
    params = {k: v for k, v in params.items() if v}
    package_options = [(p["id"], f"{p['name']} ({p['id']})") for p in packages]
    status_options = [(s, s) for s in STATUSES]
    return render(
        request,
        "admin/codes.html",
        session=session,
        status=400 if errors and status == 200 else status,
        page=page,
        package_options=package_options,
        status_options=status_options,
        filters=filters,
        params=params,
        errors=errors,
        max_batch=MAX_BATCH,
        **context,
    )


@router.get("/codes")
async def codes_page(request: Request, session: AdminSession) -> Response:
    return await _codes_page(request, session)


@router.post("/codes")
async def mint_codes(request: Request, session: AdminSession) -> Response:
    form = await form_of(request, session)
    errors: dict[str, str] = {}
    package_id = form.get("package_id", "")
    if not IDENT.match(package_id):
        errors["package_id"] = words(request, "adm_required")
    count = whole(request, form, "count", errors, low=1, high=MAX_BATCH)
    valid_days = whole(request, form, "valid_days", errors, low=1, high=MAX_VALID_DAYS, required=False)
    values = {k: form.get(k, "") for k in ("package_id", "count", "valid_days")}
    if errors or count is None:
        return await _codes_page(request, session, 400, errors=errors, values=values)
    try:
        batch = await codes_of(request, billing_of(request)).mint(package_id, count, valid_days)
    except GatewayError as error:
        field = error.param if error.param in values else "form"
        message = words(request, "adm_service_error", message=error.message)
        return await _codes_page(
            request, session, 404 if error.status == 404 else 400, errors={field: message}, values=values
        )
    await audited(
        request,
        session,
        "console.codes.mint",
        f"batch:{batch['batch_id']}",
        {"package_id": package_id, "count": count, "valid_days": valid_days},
    )
    csv_url = "data:text/csv;charset=utf-8," + quote(csv_text(batch["data"], ISSUED_FIELDS))
    notice = words(request, "adm_minted", count=count, batch=batch["batch_id"])
    return await _codes_page(request, session, 201, batch=batch, csv_url=csv_url, notice=notice)


@router.get("/orders")
async def orders_page(request: Request, session: AdminSession) -> Response:
    errors: dict[str, str] = {}
    status = request.query_params.get("status") or None
    if status not in (None, *ORDER_STATUSES):
        errors["status"], status = words(request, "adm_not_valid", limit=10), None
    try:
        page: Any = await billing_of(request).orders.list(
            status=status, limit=50, cursor=request.query_params.get("cursor") or None
        )
    except BadRequest as error:
        errors["cursor"], page = error.message, {"data": [], "next_cursor": None}
    return render(
        request,
        "admin/orders.html",
        session=session,
        status=400 if errors else 200,
        page=page,
        statuses=ORDER_STATUSES,
        selected=status,
        errors=errors,
        params={"status": status} if status else {},
    )


async def _order_page(
    request: Request, session: AdminSession, order_id: str, status: int = 200, **extra: Any
) -> Response:
    if not plain_id(order_id):
        return not_found(request, session)
    try:
        order = await billing_of(request).orders.get(order_id)
    except NotFound:
        return not_found(request, session)
    notice = words(request, "adm_refunded_now") if request.query_params.get("done") == "refunded" else None
    context = {"errors": {}, "values": {}, "notice": notice, **extra}
    return render(request, "admin/order.html", session=session, status=status, order=order, **context)


@router.get("/orders/{order_id}")
async def order_page(request: Request, order_id: str, session: AdminSession) -> Response:
    return await _order_page(request, session, order_id)


@router.post("/orders/{order_id}/refund")
async def refund(request: Request, order_id: str, session: AdminSession) -> Response:
    form = await form_of(request, session)
    errors: dict[str, str] = {}
    reason = text(request, form, "reason", errors, 500)
    values = {"reason": form.get("reason", "")}
    if errors or not plain_id(order_id):
        return await _order_page(request, session, order_id, 400, errors=errors, values=values)
    try:
        order = await billing_of(request).orders.refund(order_id, reason, actor=actor(session))
    except GatewayError as error:
        await audited(
            request,
            session,
            "console.order.refund",
            f"order:{order_id}",
            {"reason": reason, "error": error.message},
        )
        if error.status == 404:
            return not_found(request, session)
        message = words(request, "adm_service_error", message=error.message)
        return await _order_page(
            request,
            session,
            order_id,
            409 if error.status == 409 else 503,
            errors={"reason": message},
            values=values,
        )
    await audited(
        request,
        session,
        "console.order.refund",
        f"order:{order_id}",
        {"reason": reason, "status": order["status"]},
    )
    return redirect(f"/console/admin/orders/{quote(order_id)}?done=refunded")
