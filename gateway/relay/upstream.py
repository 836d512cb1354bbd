"""The HTTP clients that talk to vLLM servers.

Everything goes through :mod:`gateway.relay.http1` (a lean HTTP/1.1 client with a
keep-alive pool): the relay's requests, and the health and metrics probes.
"""

from __future__ import annotations

from gateway.catalog import Endpoint
from gateway.relay.http1 import Http1Pool, UpstreamResponse
from gateway.settings import Settings


class UpstreamClient:
    """One connection pool for every upstream (connections made on first use); closed by the
    app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pool = Http1Pool(settings.connect_timeout)
        self._auth: dict[str, bytes] = {}  # upstream API key -> its Authorization header line

    async def close(self) -> None:
        self._pool.close()

    async def post(self, endpoint: Endpoint, path: str, body: bytes, request_id: str) -> UpstreamResponse:
        """POST a JSON body; returns when the status line is in (within the first-byte timeout).

        The request id goes along as ``X-Request-Id``, so the upstream's logs (vLLM's, with
        ``--enable-request-id-headers``) name the same request as the gateway's.
        """
        key = endpoint.api_key or ""
        auth = self._auth.get(key)
        if auth is None:
            if any(c in key for c in "\r\n\0"):
                raise ValueError(f"the API key of upstream {endpoint.url} contains a line break")
            auth = self._auth[key] = f"Authorization: Bearer {key}\r\n".encode() if key else b""
        settings = self._settings
        return await self._pool.post(
            endpoint.url, path, body, auth + b"X-Request-Id: " + request_id.encode() + b"\r\n",
            first_byte_timeout=settings.first_byte_timeout,
            idle_timeout=settings.idle_timeout,
        )

    async def get(self, url: str, path: str, timeout: float) -> tuple[int, bytes]:
        """GET ``url + path``: its status and whole body within ``timeout`` seconds."""
        return await self._pool.get(url, path, timeout)
