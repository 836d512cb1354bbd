"""One request over a shared aiohttp session, timed with minimal SSE parsing.

Streams are read as raw bytes: the first read is the first byte, the first read holding a
non-empty ``"content"``/``"text"`` is the first token, ``data:`` prefixes are counted as
chunks, and a stream must end with ``data: [DONE]`` (else it counts as ``truncated``).
"""

from __future__ import annotations

import asyncio
import re
from time import perf_counter

import aiohttp

from .stats import Recorder

_TOKEN = re.compile(rb'"(?:content|text)":"[^"]')
_CARRY = 16  # bytes kept from the previous read, so a marker split across reads is seen


async def request(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    stream: bool,
    rec: Recorder,
    started: float,
) -> None:
    """POST ``body``; record into ``rec`` with times measured from ``started``."""
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                await resp.read()
                rec.errors[f"http_{resp.status}"] += 1
                return
            if not stream:
                await resp.read()
                rec.latency.append(perf_counter() - started)
                return
            await _read_stream(resp.content, rec, started)
    except TimeoutError:
        rec.errors["timeout"] += 1
    except aiohttp.ClientConnectorError:
        rec.errors["connect"] += 1
    except (aiohttp.ClientError, ConnectionError) as exc:
        rec.errors[type(exc).__name__] += 1


async def _read_stream(content: aiohttp.StreamReader, rec: Recorder, started: float) -> None:
    events = 0
    carry = b""
    first_byte: float | None = None
    first_token: float | None = None
    while True:
        data = await content.readany()
        if not data:
            break
        if first_byte is None:
            first_byte = perf_counter() - started
        window = carry + data
        if first_token is None and _TOKEN.search(window):
            first_token = perf_counter() - started
        events += window.count(b"data:") - carry.count(b"data:")
        carry = window[-_CARRY:]
    if not carry.rstrip().endswith(b"data: [DONE]"):
        rec.errors["truncated"] += 1
        return
    rec.latency.append(perf_counter() - started)
    if first_byte is not None:
        rec.first_byte.append(first_byte)
    if first_token is not None:
        rec.first_token.append(first_token)
    rec.chunks.append(events - 1)  # not [DONE]


async def wait_all(tasks: set[asyncio.Task[None]]) -> None:
    if tasks:
        await asyncio.gather(*tasks)
