"""What the control plane's routes answer besides success, for their OpenAPI schema.

Every error is ``{"error": {message, type, code, param}}`` (gateway/errors.py; control/app.py
puts FastAPI's 422 and Starlette's 404/405 in that shape too), so the schema documents that
body for each status a route really gives, rather than FastAPI's default 422 body, which no
route sends. Routers declare the statuses common to their routes (``errors(...)``) and each
route adds its own (404 for an unknown id, 409 for a conflict, ...).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

_WHEN = {
    400: "Refused: a value the schema cannot tell is wrong (a cursor not from this listing, a "
    "date that is not ISO 8601, an unknown query parameter, ...), a body that is not UTF-8, "
    "or an invalid Content-Length; `param` names the culprit when there is one",
    401: "No credential, or not a valid one",
    404: "No such account, key, package, order or code (the message says which)",
    409: "In conflict with what exists: the same id or idempotency key with other content, "
    "or a state that does not allow it",
    413: "The body exceeds the limit (`TOKENGATE_MAX_BODY_BYTES`)",
    422: "The body or a parameter fails validation: a missing or unknown field, a wrong type, "
    "a value out of range; `param` names the field",
    429: "Too many attempts: `Retry-After` says when to try again",
    503: "The ledger, Redis or the payment provider cannot answer now; try again later",
}


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, ...")
    code: str | None = Field(description="a stable code for the case, when there is one")
    param: str | None = Field(description="the parameter or field at fault, when there is one")


class ErrorBody(BaseModel):
    """Every error answer's body, in OpenAI's shape."""

    error: ErrorDetail


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route or router that answers ``statuses`` with an error body."""
    return {status: {"model": ErrorBody, "description": _WHEN[status]} for status in statuses}


def csv_answer(description: str, status: int = 200) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route whose success may be CSV (beside JSON, or instead of it)."""
    return {status: {"description": description, "content": {"text/csv": {"schema": {"type": "string"}}}}}
