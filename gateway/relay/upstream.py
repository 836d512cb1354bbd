"""The HTTP clients that talk to vLLM servers.

Requests on the relay path go through :mod:`gateway.relay.http1` (a lean HTTP/1.1 client
with a keep-alive pool); the health and metrics probes, off that path, through aiohttp.
"""

from __future__ import annotations

import aiohttp

from gateway.catalog import Endpoint
from gateway.relay.http1 import Http1Pool, UpstreamResponse
from gateway.settings import Settings


class UpstreamClient:
    """One connection pool for every upstream; opened and closed by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._pool = Http1Pool(settings.connect_timeout)
        self._auth: dict[str, bytes] = {}  # upstream API key -> its Authorization header line

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=self._settings.connect_timeout, sock_read=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        self._pool.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._session

    async def post(
        self, endpoint: Endpoint, path: str, body: bytes, request_id: str, stream: bool = False
    ) -> UpstreamResponse:
        """POST a JSON body; returns when the status line is in: within the first-byte
        timeout for a stream, the response timeout for a whole answer.

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
            first_byte_timeout=settings.answer_timeout(stream),
            idle_timeout=settings.idle_timeout,
        )

    async def get(self, url: str, timeout: float) -> aiohttp.ClientResponse:
        return await self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout))
