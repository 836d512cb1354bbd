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

import re
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


# An upstream's refusals that blame the deployment, not the client's request: the gateway's
# credentials for it (401, 403, 407), a model or route that endpoint does not serve (404, 405).
# Relayed as they are, a client would read "your key is wrong" or "no such model".
GATEWAY_REFUSALS = frozenset({401, 403, 404, 405, 407})


def upstream_fault(status: int) -> bool:
    """Whether an upstream's error status is the deployment's fault (a failure, or a refusal
    of the gateway itself): the client gets 502 and another endpoint may answer."""
    return status >= 500 or status in GATEWAY_REFUSALS


_TYPE_BY_STATUS = {
    cls.status: cls.error_type
    for cls in (BadRequest, AuthenticationFailed, BalanceExhausted, PermissionDenied, NotFound,
                MethodNotAllowed, RateLimited, ServiceUnavailable, UpstreamError, UpstreamTimeout)
}


def error_type_for(status: int) -> str:
    """The ``type`` this tree gives a status, for errors born outside it (FastAPI's own,
    an upstream's refusal): clients branch on it, so one status always reads the same."""
    return _TYPE_BY_STATUS.get(status, "invalid_request_error" if status < 500 else "api_error")


# What an upstream's message must not carry to a client: a traceback, a file or model path,
# a URL or host address, an object's memory address. Such a message is replaced whole.
_INTERNAL = re.compile(
    r"Traceback|File \"|\bline \d+, in\b|(?<![\w.~-])/(?:[\w.~-]+/)+[\w.~-]*|\b[A-Za-z]:\\"
    r"|\w+://|\b\d{1,3}(?:\.\d{1,3}){3}\b|\bat 0x[0-9a-fA-F]+"
)
_MESSAGE_LIMIT = 1000


def client_message(status: int, message: str, served: str | None = None, public: str | None = None) -> str:
    """What a client may read of an upstream's error message: a refusal's (4xx) own message
    when it shows nothing internal (the served model name put back to the public one), else a
    message of our own; a failure's (5xx) never (it is logged, not answered)."""
    if status < 400 or status >= 500:
        return f"the model server failed to answer ({status})"
    if served and public and served != public:
        message = message.replace(served, public)
    if len(message) > _MESSAGE_LIMIT or _INTERNAL.search(message):
        return f"the model server refused the request ({status})"
    return message


def upstream_error_body(status: int, body: bytes, served: str | None = None,
                        public: str | None = None) -> bytes:
    """An upstream's error answer in OpenAI's shape. vLLM names its ``type`` after Python's
    exception (``BadRequestError``) and sends ``code`` as the status number; OpenAI clients
    branch on ``type`` and a string (or null) ``code``. A refusal's message and param are kept
    when they show nothing internal (:func:`client_message`); a failure's are not."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        error = {"message": body[:_MESSAGE_LIMIT + 1].decode("utf-8", "replace").strip()}
    code, param = error.get("code"), error.get("param")
    message = str(error.get("message") or f"upstream answered {status}")
    message = client_message(status, message, served, public)
    client_error = status < 500
    return error_body(
        message,
        error_type_for(status),
        code if isinstance(code, str) and client_error and len(code) <= 64 else None,
        param if isinstance(param, str) and client_error and not _INTERNAL.search(param) else None,
    )


def event_status(payload: bytes) -> int:
    """The status of an error event an upstream sent mid-stream (``{"error": {"code": 400}}``)
    as a client gets it: a refusal of the client's request keeps its own, anything else 502."""
    try:
        error = orjson.loads(payload).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return 502
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and 400 <= code < 500 and not upstream_fault(code) else 502


def upstream_event_error(payload: bytes, served: str | None = None, public: str | None = None) -> bytes:
    """An error event an upstream sent mid-stream (``{"error": ...}``), as the client may see
    it: in OpenAI's shape, with :func:`event_status` (see :func:`upstream_error_body`)."""
    return upstream_error_body(event_status(payload), payload, served, public)
