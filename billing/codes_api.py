"""The routes of redemption codes: ``POST /admin/codes`` and ``GET /admin/codes`` (control/admin.py
mounts ``admin`` behind the admin credential) and ``POST /v1/me/redeem`` (control/me.py mounts
``redeem_router`` with its way of telling the client's address). Thin: parse, call
``billing.codes``, answer JSON or, for operators who print or mail codes, CSV.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field

from billing.api import BillingDep, StrictBody, text
from billing.code_attempts import FailureLimiter
from billing.code_format import MAX_TYPED
from billing.codes import MAX_BATCH, MAX_PAGE, MAX_VALID_DAYS, CodeService
from billing.me import CallerDep
from billing.records import CodePage, CodeStatus, IssuedCodes, Redemption
from billing.responses import csv_answer, errors
from gateway.contract import BadRequest

ISSUED_FIELDS = ("code", "package_id", "expires_at")
STATE_FIELDS = (
    "id",
    "batch_id",
    "package_id",
    "status",
    "created_at",
    "expires_at",
    "redeemed_at",
    "redeemed_by",
    "grant_id",
)


class CodeBatch(StrictBody):
    package_id: str = text(64)
    count: int = Field(ge=1, le=MAX_BATCH)
    valid_days: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VALID_DAYS,
        description="days a code may wait to be redeemed (default: forever)",
    )


class RedeemBody(StrictBody):
    code: str = text(MAX_TYPED)


def codes_of(request: Request, billing: BillingDep) -> CodeService:
    """The process's code service, made once on the Redis client and ledger it already has."""
    state = request.app.state
    codes: CodeService | None = getattr(state, "codes", None)
    if codes is None:
        codes = state.codes = CodeService(
            billing.engine, billing.packages, FailureLimiter(state.redis), billing.clock
        )
    return codes


CodesDep = Annotated[CodeService, Depends(codes_of)]
FormatQ = Annotated[str | None, Query(pattern="^(json|csv)$")]
IdQ = Annotated[str | None, Query(min_length=1, max_length=64)]


def only_params(*names: str) -> Any:
    """A dependency refusing (400) query parameters other than ``names`` (a typo filters nothing)."""

    def check(request: Request) -> None:
        for name in request.query_params:
            if name not in names:
                raise BadRequest(
                    f"unknown query parameter {name!r} (allowed: {', '.join(names)})", param=name
                )

    return Depends(check)


def wants_csv(request: Request, format: str | None) -> bool:
    """``?format=csv`` or, without ``format``, an ``Accept`` naming ``text/csv``."""
    if format is not None:
        return format == "csv"
    return "text/csv" in request.headers.get("accept", "").lower()


def csv_text(rows: Iterable[Mapping[str, Any]], fields: Sequence[str], header: bool = True) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(fields)
    for row in rows:
        writer.writerow(["" if row.get(f) is None else row.get(f) for f in fields])
    return out.getvalue()


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


admin = APIRouter()


@admin.post(
    "/codes",
    status_code=201,
    response_model=IssuedCodes,
    dependencies=[only_params("format")],
    responses={**csv_answer("The batch's codes as JSON, or as CSV (`format=csv`)", 201), **errors(404)},
)
async def mint_codes(body: CodeBatch, request: Request, codes: CodesDep, format: FormatQ = None) -> Response:
    """A batch of codes for a package; the codes are in this answer only (JSON or CSV)."""
    batch = await codes.mint(body.package_id, body.count, body.valid_days)
    if wants_csv(request, format):
        return Response(
            csv_text(batch["data"], ISSUED_FIELDS),
            status_code=201,
            media_type="text/csv",
            headers=_attachment(f"codes-{batch['batch_id']}.csv"),
        )
    return JSONResponse(batch, status_code=201)


@admin.get(
    "/codes",
    response_model=CodePage,
    dependencies=[only_params("package_id", "status", "batch_id", "limit", "cursor", "format")],
    responses=csv_answer("A page of codes as JSON, or every matching code as CSV (`format=csv`)"),
)
async def list_codes(
    request: Request,
    codes: CodesDep,
    package_id: IdQ = None,
    status: CodeStatus | None = None,
    batch_id: IdQ = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE)] = None,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    format: FormatQ = None,
) -> Response:
    """Codes' state (unused, redeemed, expired), newest first: a page of JSON, or every match as CSV."""
    filters: dict[str, Any] = {"package_id": package_id, "status": status, "batch_id": batch_id}
    if not wants_csv(request, format):
        return JSONResponse(await codes.list_codes(**filters, limit=limit or 100, cursor=cursor))
    if limit is not None or cursor is not None:
        raise BadRequest(
            "the CSV holds every matching code: limit and cursor page the JSON list only",
            param="limit" if limit is not None else "cursor",
        )
    first = await codes.list_codes(**filters, limit=MAX_PAGE)  # a bad filter is a 400, before any row

    async def rows() -> AsyncIterator[str]:
        page, header = first, True
        while True:
            yield csv_text(page["data"], STATE_FIELDS, header)
            if page["next_cursor"] is None:
                return
            header = False
            page = await codes.list_codes(**filters, limit=MAX_PAGE, cursor=page["next_cursor"])

    return StreamingResponse(rows(), media_type="text/csv", headers=_attachment("codes.csv"))


def redeem_router(bucket_of: Callable[[Request], str]) -> APIRouter:
    """``POST /redeem`` for a key's own account; ``bucket_of`` names the client's address as
    the limit on failed attempts counts it (the control plane knows which proxies to trust)."""
    router = APIRouter()

    @router.post("/redeem", status_code=201, responses=errors(404, 409, 429))
    async def redeem(body: RedeemBody, who: CallerDep, codes: CodesDep, request: Request) -> Redemption:
        """Redeem a code: its package is granted to the key's account, once."""
        grant = await codes.redeem(who[0].account_id, body.code, bucket_of(request))
        return {"grant": grant}

    return router
