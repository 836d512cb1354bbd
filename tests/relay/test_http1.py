"""The relay's HTTP/1.1 client against real sockets: a scripted asyncio server per test.

The server answers each request it reads with the next scripted reply (raw bytes, written
in parts with pauses), records what it received, and can close or go silent. That covers
what vLLM's uvicorn does (content-length and chunked bodies, keep-alive, closing idle
connections) and what it might do wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.relay import http1
from gateway.relay.http1 import Http1Pool, UpstreamClosed, UpstreamConnectError

Reply = list[bytes | float | None]  # bytes to write, seconds to wait, None = close the socket


@dataclass
class Script:
    replies: list[Reply] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


async def _serve(script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests with the script's replies; a wait step notices the client leaving."""
    script.connections += 1
    script.writers.append(writer)
    try:
        while script.replies:
            head = await reader.readuntil(b"\r\n\r\n")
            _, has_length, rest = head.lower().partition(b"content-length: ")
            length = int(rest.split(b"\r\n")[0]) if has_length else 0
            script.requests.append(head + await reader.readexactly(length))
            for step in script.replies.pop(0):
                if step is None:
                    writer.close()
                    return
                if isinstance(step, float):
                    try:  # the client sends nothing mid-response: a read only sees it leave
                        if not await asyncio.wait_for(reader.read(1), step):
                            raise ConnectionResetError
                    except TimeoutError:
                        pass
                else:
                    writer.write(step)
                    await writer.drain()
        await reader.read()  # until the client closes
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    script.closed_by_client.set()
    writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Script, str]]:
    script = Script()
    srv = await asyncio.start_server(lambda r, w: _serve(script, r, w), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    yield script, f"http://127.0.0.1:{port}"
    srv.close()
    for writer in script.writers:
        writer.close()
    await asyncio.sleep(0)


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
        len(body), body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def post(pool: Http1Pool, url: str, body: bytes = b"{}", first_byte: float = 5, idle: float = 5,
               path: str = "/v1/chat/completions") -> http1.UpstreamResponse:
    return await pool.post(url, path, body, b"X-Request-Id: r1\r\n",
                           first_byte_timeout=first_byte, idle_timeout=idle)


async def test_request_bytes_and_keep_alive(server: tuple[Script, str]) -> None:
    script, url = server
    script.replies = [[ok(b'{"a":1}')], [ok(b'{"b":2}')]]
    pool = Http1Pool(connect_timeout=2)
    first = await post(pool, url + "/base", b'{"x":1}')
    assert first.status == 200 and await first.read() == b'{"a":1}'
    first.release()
    second = await post(pool, url + "/base")
    assert await second.read() == b'{"b":2}'
    second.release()
    assert script.connections == 1  # the second request reused the connection
    head = script.requests[0]
    assert head.startswith(b"POST /base/v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in head and b"\r\nX-Request-Id: r1\r\n" in head
    assert head.endswith(b'\r\n\r\n{"x":1}')
    pool.close()


async def test_chunked_stream_arrives_piece_by_piece(server: tuple[Script, str]) -> None:
    script, url = server
    script.replies = [[CHUNKED_HEAD, chunk(b"data: 1\n\n"), 0.05, chunk(b"data: 2\n\n"), 0.05, b"0\r\n\r\n"]]
    pool = Http1Pool(connect_timeout=2)
    response = await post(pool, url)
    pieces = []
    while data := await response.read_some():
        pieces.append(data)
    assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]
    response.release()
    pool.close()


async def test_large_body_survives_flow_control(server: tuple[Script, str]) -> None:
    script, url = server
    body = bytes(range(256)) * 8192  # 2 MiB, well past the high-water mark
    script.replies = [[CHUNKED_HEAD, *(chunk(body[i:i + 65536]) for i in range(0, len(body), 65536)),
                       b"0\r\n\r\n"]]
    pool = Http1Pool(connect_timeout=2)
    response = await post(pool, url)
    got = bytearray()
    while data := await response.read_some():
        got += data
        await asyncio.sleep(0.001)  # a slow consumer: reading pauses and resumes
    assert bytes(got) == body
    response.release()
    pool.close()


async def test_stale_pooled_connection_is_replaced(server: tuple[Script, str]) -> None:
    """The server closes a kept-alive connection between requests: a fresh one is used."""
    script, url = server
    script.replies = [[ok(b"1"), None], [ok(b"2")]]
    pool = Http1Pool(connect_timeout=2)
    first = await post(pool, url)
    assert await first.read() == b"1"
    first.release()  # kept: the server sent no "connection: close"
    second = await post(pool, url)  # the pooled socket is dead (seen or not): a new one
    assert await second.read() == b"2"
    second.release()
    assert script.connections == 2
    pool.close()


async def test_connect_refused_is_a_connect_error() -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    pool = Http1Pool(connect_timeout=2)
    with pytest.raises(UpstreamConnectError):
        await post(pool, f"http://127.0.0.1:{port}")


async def test_silence_before_the_status_is_a_timeout(server: tuple[Script, str]) -> None:
    script, url = server
    script.replies = [[2.0, ok(b"late")]]
    pool = Http1Pool(connect_timeout=2)
    with pytest.raises(TimeoutError) as caught:
        await post(pool, url, first_byte=0.2)
    assert not isinstance(caught.value, UpstreamConnectError)
    await asyncio.wait_for(script.closed_by_client.wait(), 2)  # the connection was dropped
    pool.close()


async def test_silence_mid_body_is_a_timeout(server: tuple[Script, str]) -> None:
    script, url = server
    script.replies = [[CHUNKED_HEAD, chunk(b"data: 1\n\n"), 2.0, b"0\r\n\r\n"]]
    pool = Http1Pool(connect_timeout=2)
    response = await post(pool, url, idle=0.2)
    assert await response.read_some() == b"data: 1\n\n"
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await response.read_some()
    assert asyncio.get_running_loop().time() - started < 1.0
    response.close()
    pool.close()


async def test_broken_stream_raises_after_the_bytes_that_arrived(server: tuple[Script, str]) -> None:
    script, url = server
    script.replies = [[CHUNKED_HEAD, chunk(b"data: 1\n\n"), 0.05, None]]
    pool = Http1Pool(connect_timeout=2)
    response = await post(pool, url)
    assert await response.read_some() == b"data: 1\n\n"
    with pytest.raises(UpstreamClosed):
        await response.read_some()
    response.close()
    pool.close()


async def test_close_aborts_the_upstream_request(server: tuple[Script, str]) -> None:
    """What a client disconnect does: the upstream sees its connection go at once."""
    script, url = server
    script.replies = [[CHUNKED_HEAD, chunk(b"data: 1\n\n"), 5.0, b"0\r\n\r\n"]]
    pool = Http1Pool(connect_timeout=2)
    response = await post(pool, url)
    assert await response.read_some() == b"data: 1\n\n"
    response.close()
    await asyncio.wait_for(script.closed_by_client.wait(), 2)
    pool.close()


async def test_unfinished_body_is_not_pooled(server: tuple[Script, str]) -> None:
    script, url = server
    script.replies = [[CHUNKED_HEAD, chunk(b"data: 1\n\n"), 0.3, b"0\r\n\r\n"], [ok(b"2")]]
    pool = Http1Pool(connect_timeout=2)
    response = await post(pool, url)
    assert await response.read_some() == b"data: 1\n\n"
    response.release()  # the body has not ended: released means closed
    again = await post(pool, url)
    assert await again.read() == b"2"
    again.release()
    assert script.connections == 2
    pool.close()


async def test_malformed_http_is_upstream_closed(server: tuple[Script, str]) -> None:
    script, url = server
    script.replies = [[b"NOT HTTP AT ALL\r\n\r\n"]]
    pool = Http1Pool(connect_timeout=2)
    with pytest.raises(UpstreamClosed):
        await post(pool, url)
    pool.close()


async def test_pooled_connection_closed_unseen_is_retried_fresh(
    server: tuple[Script, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the pool hands out a socket whose close it has not seen yet."""
    script, url = server
    script.replies = [[ok(b"1"), None], [ok(b"2")]]
    pool = Http1Pool(connect_timeout=2)
    first = await post(pool, url)
    assert await first.read() == b"1"
    first.release()
    await asyncio.sleep(0.05)  # the close arrives; pretend it was not noticed
    monkeypatch.setattr(http1._Connection, "usable", lambda self, now: True)
    second = await post(pool, url)
    assert await second.read() == b"2"
    second.release()
    assert script.connections == 2
    pool.close()


async def test_whole_large_body_is_read(server: tuple[Script, str]) -> None:
    """read() of a body past the high-water mark (a big embeddings answer) does not stall."""
    script, url = server
    body = bytes(range(256)) * 8192  # 2 MiB
    script.replies = [[ok(body)]]
    pool = Http1Pool(connect_timeout=2)
    response = await post(pool, url)
    assert await asyncio.wait_for(response.read(), 5) == body
    response.release()
    pool.close()


async def test_get_reads_status_and_body_and_keeps_the_connection(server: tuple[Script, str]) -> None:
    """The routing monitor's GETs: /health, then /metrics on the same kept-alive socket."""
    script, url = server
    metrics = b"vllm:num_requests_running 1.0\n" * 20000  # past the high-water mark
    script.replies = [[ok(b"")], [ok(metrics)]]
    pool = Http1Pool(connect_timeout=2)
    assert await pool.get(url + "/base", "/health", 2) == (200, b"")
    assert await pool.get(url + "/base", "/metrics", 2) == (200, metrics)
    host = url.removeprefix("http://").encode()
    assert script.requests[0] == b"GET /base/health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    assert script.connections == 1
    pool.close()


async def test_get_gives_up_after_its_timeout(server: tuple[Script, str]) -> None:
    """A hung endpoint fails its probe within the probe's timeout, and the socket is dropped."""
    script, url = server
    script.replies = [[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhal", 5.0]]
    pool = Http1Pool(connect_timeout=2)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        await pool.get(url, "/health", 0.3)
    assert asyncio.get_running_loop().time() - started < 1.0
    await asyncio.wait_for(script.closed_by_client.wait(), 2)
    pool.close()
