"""The pooled HTTP client that talks to vLLM servers (aiohttp: cheapest per streamed chunk)."""

from __future__ import annotations

import aiohttp

from gateway.catalog import Endpoint
from gateway.settings import Settings


class UpstreamClient:
    """One connection pool for every upstream; opened and closed by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=self._settings.connect_timeout, sock_read=None
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._session

    async def post(self, endpoint: Endpoint, path: str, body: bytes) -> aiohttp.ClientResponse:
        headers = {"content-type": "application/json"}
        if endpoint.api_key:
            headers["authorization"] = f"Bearer {endpoint.api_key}"
        return await self.session.post(endpoint.url + path, data=body, headers=headers)

    async def get(self, url: str, timeout: float) -> aiohttp.ClientResponse:
        return await self.session.get(url, timeout=aiohttp.ClientTimeout(total=timeout))
