"""A small client of the admin API over the standard library (urllib), never proxied to loopback.

Every failure becomes an :class:`AdminError` carrying one plain sentence and an exit status,
which the CLI prints as ``tokengate: <sentence>``.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8001"
TIMEOUT_S = 30.0


class AdminError(Exception):
    """One sentence for the user and the exit status (1: the API or the network, 2: usage)."""

    def __init__(self, sentence: str, status: int = 1) -> None:
        super().__init__(sentence)
        self.sentence = sentence
        self.status = status


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reason(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or error.__class__.__name__


class AdminClient:
    def __init__(self, base_url: str, admin_key: str, timeout: float = TIMEOUT_S) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdminError(f"the admin API URL must be http(s)://host[:port], not {base_url!r}", 2)
        self.base = base_url.rstrip("/")
        self.admin_key = admin_key
        self.timeout = timeout
        handlers: list[urllib.request.BaseHandler] = []
        if is_loopback(parts.hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # never through a proxy for loopback
        self.opener = urllib.request.build_opener(*handlers)

    def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        missing: str | None = None,
    ) -> tuple[int, bytes]:
        """(status, body) of a 2xx answer; AdminError otherwise. ``missing``: what a 404 means."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Authorization": f"Bearer {self.admin_key}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self.opener.open(req, timeout=self.timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            with error:
                raise self._refusal(error.code, error.read(), missing) from None
        except urllib.error.URLError as error:
            reason = error.reason if isinstance(error.reason, BaseException) else OSError(str(error.reason))
            raise AdminError(f"cannot reach the admin API at {self.base}: {_reason(reason)}") from None
        except (OSError, ValueError) as error:  # reset mid-answer, bad status line, timeout on read
            raise AdminError(f"cannot reach the admin API at {self.base}: {_reason(error)}") from None

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        _, raw = self.request(method, path, **kwargs)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise AdminError(f"the admin API at {self.base} answered something other than JSON") from None

    @staticmethod
    def _refusal(status: int, raw: bytes, missing: str | None) -> AdminError:
        message = ""
        try:
            detail = json.loads(raw)
            if isinstance(detail, dict) and isinstance(detail.get("error"), dict):
                message = str(detail["error"].get("message") or "")
        except ValueError:
            pass
        if status == 401:
            return AdminError("the admin key was refused (401)")
        if status == 404 and missing:
            return AdminError(f"{missing} not found (404)")
        message = " ".join(message.split()).rstrip(".") or "the admin API refused the request"
        return AdminError(f"{message} ({status})")
