"""Why the relay has its own HTTP/1.1 client: client CPU per streamed response, against
aiohttp and httpx.

    python -m loadtest.bench_http_clients [--streams N] [--concurrency C]

Starts a vLLM simulator (64-token streams, 1 ms between tokens) and reads the same streams with
each client, chunk by chunk as the relay does; reports this process's CPU per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import orjson

BODY = orjson.dumps({"model": "m", "prompt": "a b c", "max_tokens": 64, "stream": True,
                     "ignore_eos": True})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _aiohttp(url: str, streams: int, concurrency: int) -> int:
    chunks = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            nonlocal chunks
            async with semaphore, session.post(url, data=BODY,
                                               headers={"content-type": "application/json"}) as r:
                async for _ in r.content.iter_any():
                    chunks += 1

        await asyncio.gather(*(one() for _ in range(streams)))
    return chunks


async def _httpx(url: str, streams: int, concurrency: int) -> int:
    chunks = 0
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            nonlocal chunks
            async with semaphore, client.stream("POST", url, content=BODY,
                                                headers={"content-type": "application/json"}) as r:
                async for _ in r.aiter_raw():
                    chunks += 1

        await asyncio.gather(*(one() for _ in range(streams)))
    return chunks


async def _http1(url: str, streams: int, concurrency: int) -> int:
    from gateway.relay.http1 import Http1Pool

    chunks = 0
    pool = Http1Pool(connect_timeout=5)
    root, path = url.split("/v1/", 1)
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal chunks
        async with semaphore:
            response = await pool.post(root, "/v1/" + path, BODY, b"",
                                       first_byte_timeout=30, idle_timeout=30)
            while await response.read_some():
                chunks += 1
            response.release()

    try:
        await asyncio.gather(*(one() for _ in range(streams)))
    finally:
        pool.close()
    return chunks


async def _measure(name: str, run: Callable[[str, int, int], Awaitable[int]], url: str,
                   streams: int, concurrency: int) -> None:
    await run(url, 50, concurrency)  # warm up: connections, code paths
    cpu, wall = time.process_time(), time.perf_counter()
    chunks = await run(url, streams, concurrency)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{name:8} {cpu / streams * 1e6:7.0f} us CPU/stream  {streams / wall:7.0f} streams/s  "
          f"({chunks / streams:.0f} reads/stream)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    port = _free_port()
    sim = subprocess.Popen([sys.executable, "-m", "loadtest.vllm_sim", "--port", str(port),
                            "--model", "m", "--itl-ms", "1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not _listening(port):
            if time.monotonic() > deadline:
                raise SystemExit("the simulator did not start")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/completions"
        import uvloop

        for name, run in (("http1", _http1), ("aiohttp", _aiohttp), ("httpx", _httpx)):
            uvloop.run(_measure(name, run, url, args.streams, args.concurrency))
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
