"""A local stand-in of the part of Stripe's HTTP API tokengate calls, for tests only.

It is NOT Stripe: it answers ``POST /v1/checkout/sessions`` and ``POST /v1/refunds`` with
objects shaped as Stripe documents them (the fields tokengate and the ``stripe`` package
read), records every request with its ``Idempotency-Key``, answers a repeated key with the
first answer (as Stripe does), and builds the signed ``checkout.session.completed`` events
Stripe would deliver. The control plane reaches it through ``TOKENGATE_STRIPE_API_BASE``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx

from billing.payments.stripe_webhook import sign


@dataclass
class Call:
    path: str
    params: dict[str, str]
    idempotency_key: str | None
    authorization: str | None


@dataclass
class StripeStandIn:
    server: ThreadingHTTPServer
    calls: list[Call] = field(default_factory=list)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # by idempotency key
    fail_next: int = 0  # answer this many requests with a 500

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if self.fail_next > 0:
            self.fail_next -= 1
            return 500, {"error": {"type": "api_error", "message": "stand-in failure"}}
        if path == "/v1/checkout/sessions":
            return 200, self._session(params)
        if path == "/v1/refunds":
            return 200, {
                "id": "re_" + secrets.token_hex(8),
                "object": "refund",
                "status": "succeeded",
                "payment_intent": params.get("payment_intent"),
                "amount": int(params.get("amount", 0)),
            }
        return 404, {
            "error": {"type": "invalid_request_error", "message": f"Unrecognized request URL {path}"}
        }

    def _session(self, params: dict[str, str]) -> dict[str, Any]:
        amount = int(params["line_items[0][price_data][unit_amount]"]) * int(
            params["line_items[0][quantity]"]
        )
        session = {
            "id": "cs_test_" + secrets.token_hex(12),
            "object": "checkout.session",
            "url": "https://checkout.stripe.com/c/pay/" + secrets.token_hex(8),
            "client_reference_id": params.get("client_reference_id"),
            "metadata": {"order_id": params.get("metadata[order_id]")},
            "amount_total": amount,
            "currency": params["line_items[0][price_data][currency]"],
            "mode": params.get("mode"),
            "payment_status": "unpaid",
            "status": "open",
            "payment_intent": None,
            "expires_at": int(params.get("expires_at", 0)),
        }
        self.sessions[session["id"]] = session
        return session

    def completed_event(self, session_id: str, **changes: Any) -> dict[str, Any]:
        """The ``checkout.session.completed`` event of a paid session (``changes`` alter it)."""
        session = {
            **self.sessions[session_id],
            "payment_status": "paid",
            "status": "complete",
            "payment_intent": "pi_" + session_id[-12:],
            **changes,
        }
        return {
            "id": "evt_" + secrets.token_hex(12),
            "object": "event",
            "type": "checkout.session.completed",
            "created": int(time.time()),
            "livemode": False,
            "data": {"object": session},
        }


def start_stripe_standin() -> StripeStandIn:
    holder: dict[str, StripeStandIn] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            standin = holder["it"]
            body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode()
            params = dict(parse_qsl(body, keep_blank_values=True))
            key = self.headers.get("idempotency-key")
            standin.calls.append(Call(self.path, params, key, self.headers.get("authorization")))
            if key and key in standin.answers:
                status, answer = standin.answers[key]
            else:
                status, answer = standin.answer(self.path, params)
                if key and status == 200:
                    standin.answers[key] = (status, answer)
            raw = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.send_header("request-id", "req_" + secrets.token_hex(6))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["it"] = standin = StripeStandIn(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return standin


def deliver(
    control_url: str,
    event: dict[str, Any] | bytes,
    secret: str,
    *,
    timestamp: int | None = None,
    signature: str | None = None,
) -> httpx.Response:
    """POST an event to ``/webhooks/stripe`` signed as Stripe signs (or with ``signature``)."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    header = signature or sign(body, secret, int(time.time()) if timestamp is None else timestamp)
    return httpx.post(
        control_url + "/webhooks/stripe",
        content=body,
        timeout=10,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )
