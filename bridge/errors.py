"""litellm's exceptions as OpenAI-shaped errors that say nothing of the provider.

A provider's error text names the provider, its request ids, sometimes its hosts and the
account; it goes to the bridge's log, and the client (through the data plane, which also
hides every 5xx message) gets a message of ours. The status says whose problem it is:

    the request (too long, refused content, a parameter) 400
    the provider's limits (429)                          429: the data plane tries elsewhere
    the operator's (key refused, model unknown, unpaid)  502: the endpoint cannot serve
    the provider's failure, or a timeout                 502, 503, 504
"""

from __future__ import annotations

import logging

import orjson
from litellm import exceptions as e

from gateway.errors import error_body, error_type_for

log = logging.getLogger("tokengate.bridge")


class BridgeError(Exception):
    """An answer of the bridge's own: status, message, and the OpenAI ``code`` and ``param``."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> bytes:
        return error_body(self.message, error_type_for(self.status), self.code, self.param)

    def event(self) -> bytes:
        """The error as a mid-stream SSE event, as vLLM sends one (``code`` is the status:
        the data plane answers a client error's own, anything else as 502), then [DONE]."""
        error = {"message": self.message, "type": error_type_for(self.status), "param": self.param,
                 "code": self.status}
        return b"data: " + orjson.dumps({"error": error}) + b"\n\ndata: [DONE]\n\n"


# Most specific first: ContextWindowExceededError is a BadRequestError, and so on.
_MAPPING: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (e.ContextWindowExceededError, 400, "context_length_exceeded",
     "the prompt and max_tokens exceed the model's context window"),
    (e.ContentPolicyViolationError, 400, "content_policy_violation",
     "the model's provider refused the content of the request"),
    (e.UnsupportedParamsError, 400, "unsupported_parameter",
     "the request has a parameter this model does not support"),
    (e.PaymentRequiredError, 502, "provider_unavailable", "the model's provider refused to serve"),
    (e.BadRequestError, 400, "invalid_request",
     "the model's provider refused the request as invalid"),
    (e.UnprocessableEntityError, 400, "invalid_request",
     "the model's provider refused the request as invalid"),
    (e.AuthenticationError, 502, "provider_auth_failed", "the model's provider refused to serve"),
    (e.PermissionDeniedError, 502, "provider_auth_failed", "the model's provider refused to serve"),
    (e.NotFoundError, 502, "provider_model_not_found", "the model's provider refused to serve"),
    (e.RateLimitError, 429, "provider_rate_limited", "the model's provider is at its rate limit"),
    (e.Timeout, 504, "provider_timeout", "the model's provider did not answer in time"),
    (e.ServiceUnavailableError, 503, "provider_unavailable", "the model's provider is unavailable"),
)


def provider_error(exc: BaseException, request_id: str = "-", secret: str | None = None) -> BridgeError:
    """The client's error for a provider's failure; the provider's text goes to the log under
    the data plane's request id (``secret``, the provider key, blanked should it appear)."""
    text = f"{exc.__class__.__name__}: {exc}"[:2000]
    if secret:
        text = text.replace(secret, "***")
    for cls, status, code, message in _MAPPING:
        if isinstance(exc, cls):
            log.log(logging.INFO if status < 500 else logging.WARNING, "%s: provider failed (%s): %s",
                    request_id, status, text)
            return BridgeError(status, message, code)
    log.warning("%s: provider call failed: %s", request_id, text)
    return BridgeError(502, "the model's provider failed to answer", "provider_error")
