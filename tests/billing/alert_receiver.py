"""A real HTTP receiver of alert webhooks for the tests (a thread serving http.server), and the
signature check of docs/billing.md's receivers' guide, written from the guide rather than
from billing's code, so a change to either is caught."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(raw_body: bytes, signature: str, secret: str, now_s: float, tolerance_s: int = 300) -> bool:
    """docs/billing.md: the receiver's check of ``Tokengate-Signature``."""
    fields = [part.split("=", 1) for part in signature.split(",") if "=" in part]
    timestamp = next((v for k, v in fields if k == "t"), None)
    if timestamp is None or not timestamp.isdigit() or abs(now_s - int(timestamp)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, v in fields if k == "v1")


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """Answers each POST with the next of ``statuses`` (then 200); records every request.

    ``hold_first_s``: the first request waits this long before its answer (a sender killed
    meanwhile never learns it was received). A 3xx answer points at ``/elsewhere``. Its path
    is its own: a request meant for an earlier test's receiver (the tests share a ledger)
    that reaches this port gets 410 and is not counted.
    """

    def __init__(self, statuses: list[int] | None = None, hold_first_s: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.hold_first_s = hold_first_s
        self.received: list[Received] = []
        self.path = f"/hooks/{secrets.token_hex(6)}"
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of(self, event_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.headers.get("tokengate-event-id") == event_id]

    def __iter__(self) -> Iterator[Received]:
        with self.lock:
            return iter(list(self.received))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != receiver.path:
                    self.send_response(410)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with receiver.lock:
                    first = not receiver.received
                    receiver.received.append(
                        Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if first and receiver.hold_first_s:
                    time.sleep(receiver.hold_first_s)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
