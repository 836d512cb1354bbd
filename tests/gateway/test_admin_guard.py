"""The admin API checks its credential and bounds the body before reading any of it."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx

from tests.gateway.conftest import ADMIN_KEY, Gateway


def raw_post(gateway: Gateway, head: str, body: bytes = b"", wait: float = 5.0) -> bytes:
    """Send a request head (and maybe part of a body) and read what comes back in ``wait`` s."""
    url = urlsplit(gateway.control)
    with socket.create_connection((url.hostname, url.port), timeout=wait) as sock:
        sock.sendall(head.encode() + body)
        sock.settimeout(wait)
        answer = b""
        deadline = time.monotonic() + wait
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def test_anonymous_big_body_is_refused_from_the_headers(gateway: Gateway) -> None:
    """100 MB declared, none sent: the 401 comes at once (the body was never awaited)."""
    started = time.monotonic()
    answer = raw_post(gateway, "POST /admin/accounts HTTP/1.1\r\nHost: x\r\n"
                               "Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"x-request-id" in answer.lower()
    assert time.monotonic() - started < 3


def test_admin_body_is_bounded(gateway: Gateway) -> None:
    auth = f"Authorization: Bearer {ADMIN_KEY}\r\n"
    declared = raw_post(gateway, f"POST /admin/accounts HTTP/1.1\r\nHost: x\r\n{auth}"
                                 "Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    chunk = b'{"name": "' + b"x" * 70000 + b'"}'
    chunked = raw_post(gateway, f"POST /admin/accounts HTTP/1.1\r\nHost: x\r\n{auth}"
                                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                       f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    ok = httpx.post(gateway.control + "/admin/accounts", json={"name": "guarded"}, timeout=5,
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert ok.status_code == 201 and ok.json()["name"] == "guarded" and ok.headers["x-request-id"]
