"""The one error tree of the gateway, and its mapping to HTTP and OpenAI's error body.

Domain code raises these; only the edge (``gateway.api``) turns them into responses.

    GatewayError                         500 api_error
    ├── BadRequest                       400 invalid_request_error
    │   └── PayloadTooLarge              413 invalid_request_error
    ├── AuthenticationFailed             401 authentication_error   (unknown/disabled key)
    ├── BalanceExhausted                 402 insufficient_quota
    ├── PermissionDenied                 403 permission_error       (model not allowed)
    ├── NotFound                         404 not_found_error        (unknown model, route)
    ├── MethodNotAllowed                 405 invalid_request_error  (+ Allow)
    ├── RateLimited                      429 rate_limit_error       (+ Retry-After, x-ratelimit-*)
    ├── ServiceUnavailable               503 service_unavailable    (+ Retry-After)
    │   ├── QuotaUnavailable             Redis unreachable: fail closed, never serve unmetered
    │   └── BalanceUnknown               the balance is missing from Redis until reconciled
    └── UpstreamError                    502 upstream_error
        ├── UpstreamTimeout              504 upstream_timeout
        └── NoHealthyEndpoint            503 no_healthy_endpoint

``endpoint_fault`` says whether an error counts against the health of the endpoint that
raised it: a connection lost or a body cut short does; a timeout does not (the endpoint is
busy or slow, not broken), nor does a refusal or a saturated endpoint.

The status codes are the ones the official OpenAI clients map to their exception classes
(``BadRequestError``, ``AuthenticationError``, ``PermissionDeniedError``, ``NotFoundError``,
``RateLimitError``, ``InternalServerError`` for 5xx, and ``APIStatusError`` for 402/413).
"""

from __future__ import annotations

from typing import ClassVar

import orjson


def error_body(message: str, error_type: str, code: str | None = None, param: str | None = None) -> bytes:
    """``{"error": {message, type, code, param}}``: every error body the gateway sends."""
    return orjson.dumps({"error": {"message": message, "type": error_type, "code": code, "param": param}})


class GatewayError(Exception):
    """Base of every error the gateway answers with an OpenAI-shaped body."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"
    endpoint_fault: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.headers: dict[str, str] = headers or {}

    def body(self) -> bytes:
        """The JSON body OpenAI clients parse: ``{"error": {message, type, code, param}}``."""
        return error_body(self.message, self.error_type, self.code, self.param)

    def sse_event(self) -> bytes:
        """The same error as a mid-stream SSE event, as vLLM sends it, followed by [DONE]."""
        return b"data: " + self.body() + b"\n\ndata: [DONE]\n\n"


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class PayloadTooLarge(BadRequest):
    status = 413


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"


class BalanceExhausted(GatewayError):
    status = 402
    error_type = "insufficient_quota"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "permission_error"


class NotFound(GatewayError):
    status = 404
    error_type = "not_found_error"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code="method_not_allowed", headers=headers)


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"


class QuotaUnavailable(ServiceUnavailable):
    """Redis cannot be reached: the gateway refuses rather than serve unmetered."""


class BalanceUnknown(ServiceUnavailable):
    """The account's balance is absent from Redis (data loss): refused until rebuilt."""


class UpstreamError(GatewayError):
    status = 502
    error_type = "upstream_error"
    endpoint_fault = True


class UpstreamTimeout(UpstreamError):
    """Slow, not broken: the endpoint keeps its good name."""

    status = 504
    error_type = "upstream_timeout"
    endpoint_fault = False


class NoHealthyEndpoint(UpstreamError):
    status = 503
    error_type = "no_healthy_endpoint"
    endpoint_fault = False


_TYPE_BY_STATUS = {
    cls.status: cls.error_type
    for cls in (BadRequest, AuthenticationFailed, BalanceExhausted, PermissionDenied, NotFound,
                MethodNotAllowed, RateLimited, ServiceUnavailable, UpstreamError, UpstreamTimeout)
}


def error_type_for(status: int) -> str:
    """The ``type`` this tree gives a status, for errors born outside it (FastAPI's own,
    an upstream's refusal): clients branch on it, so one status always reads the same."""
    return _TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "api_error")


def upstream_error_body(status: int, body: bytes) -> bytes:
    """An upstream's error answer in OpenAI's shape. vLLM names its ``type`` after Python's
    exception (``BadRequestError``) and sends ``code`` as the status number; OpenAI clients
    branch on ``type`` and a string (or null) ``code``. Message and param are kept."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        error = {"message": body[:500].decode("utf-8", "replace").strip()}
    code, param = error.get("code"), error.get("param")
    return error_body(
        str(error.get("message") or f"upstream answered {status}"),
        error_type_for(status),
        code if isinstance(code, str) else None,
        param if isinstance(param, str) else None,
    )
