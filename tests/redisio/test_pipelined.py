"""The request path's Redis client against real servers: pipelining, scripts, faults,
Redis Cluster redirects."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis.asyncio as redis_py
from redis import exceptions as rx
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redisio import UNAVAILABLE, PipelinedCluster, PipelinedConnection, Script, fast_redis
from launcher.embedded import free_port
from tests.redis_servers import RedisClusterServers, RedisServer, redis_server


async def test_concurrent_commands_are_answered_in_order(redis_standalone: RedisServer) -> None:
    conn = PipelinedConnection.from_url(redis_standalone.url)
    try:
        await conn.execute("DEL", "pipe:n")
        results = await asyncio.gather(*(conn.execute("INCR", "pipe:n") for _ in range(2000)))
        assert sorted(results) == list(range(1, 2001))
        assert results == list(range(1, 2001))  # one connection: Redis answers in order
    finally:
        await conn.aclose()


async def test_an_error_reply_does_not_desynchronise(redis_standalone: RedisServer) -> None:
    conn = PipelinedConnection.from_url(redis_standalone.url)
    try:
        await conn.execute("SET", "pipe:a", "1")
        ok, bad, after = await asyncio.gather(
            conn.execute("GET", "pipe:a"), conn.execute("NOSUCHCOMMAND"), conn.execute("GET", "pipe:a"),
            return_exceptions=True)
        assert ok == b"1" and after == b"1"
        assert isinstance(bad, ResponseError)
    finally:
        await conn.aclose()


async def test_not_now_replies_are_unavailable_and_bugs_are_not(private_redis: RedisServer) -> None:
    """Out of memory and a failed-over (read-only) Redis mean "not now": typed as redis-py
    types them, so the request path answers 503; a bad command stays a plain error."""
    conn = PipelinedConnection.from_url(private_redis.url)
    admin = redis_py.Redis.from_url(private_redis.url)
    try:
        await admin.config_set("maxmemory", "1")  # every write is refused: OOM
        with pytest.raises(rx.OutOfMemoryError) as oom:
            await conn.execute("SET", "pipe:k", "v")
        await admin.config_set("maxmemory", "0")
        await admin.replicaof("127.0.0.1", "1")  # a replica now (of nothing): READONLY
        with pytest.raises(rx.ReadOnlyError) as readonly:
            await conn.execute("SET", "pipe:k", "v")
        await admin.replicaof("NO", "ONE")
        await conn.execute("SET", "pipe:k", "v")
        with pytest.raises(ResponseError) as wrongtype:
            await conn.execute("LPUSH", "pipe:k", "x")
        assert isinstance(oom.value, UNAVAILABLE) and isinstance(readonly.value, UNAVAILABLE)
        assert not isinstance(wrongtype.value, UNAVAILABLE)
    finally:
        await conn.aclose()
        await admin.aclose()


async def test_script_loads_itself_after_script_flush(redis_standalone: RedisServer) -> None:
    conn = PipelinedConnection.from_url(redis_standalone.url)
    script = Script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")
    try:
        await conn.execute("SCRIPT", "FLUSH")
        assert await script(conn, ["k"], ["v", 41]) == [b"k", b"v", 42]
        assert await script(conn, ["k"], ["w", 1]) == [b"k", b"w", 2]
    finally:
        await conn.aclose()


async def test_database_and_password(private_redis: RedisServer) -> None:
    subprocess.run(["redis-cli", "-p", str(private_redis.port), "CONFIG", "SET", "requirepass", "s3cret"],
                   check=True, capture_output=True)
    server = private_redis
    if True:
        conn = fast_redis(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        try:
            await conn.execute("SET", "where", "db3")
            assert await conn.execute("SELECT", 3) == b"OK"
            assert await conn.execute("GET", "where") == b"db3"
        finally:
            await conn.aclose()
        wrong = fast_redis(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(RedisConnectionError):
            await wrong.execute("PING")
        await wrong.aclose()


async def test_a_unix_socket_url(tmp_path: Path) -> None:
    """REDIS_URL=unix:///path.sock?db=N (as redis-py takes it) reaches that socket and database."""
    sock = tmp_path / "r.sock"
    with redis_server("--unixsocket", str(sock), "--unixsocketperm", "700") as server:
        subprocess.run(["redis-cli", "-p", str(server.port), "CONFIG", "SET", "requirepass", "s3cret"],
                       check=True, capture_output=True)
        conn = fast_redis(f"unix://:s3cret@{sock}?db=2")
        try:
            await conn.execute("SET", "where", "db2")
            assert await conn.execute("CLIENT", "INFO")  # connected
            tcp = redis_py.Redis(port=server.port, password="s3cret", db=2)
            assert await tcp.get("where") == b"db2"  # the same server, database 2
            await tcp.aclose()
        finally:
            await conn.aclose()


def _tls_files(where: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate for 127.0.0.1 signed by it (openssl)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (where / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", "san.ext", "-out", "server.crt")
    return where / "ca.crt", where / "server.crt", where / "server.key"


async def test_a_tls_url_verifies_the_server(tmp_path: Path) -> None:
    """rediss:// speaks TLS and checks the certificate: against the CA given, yes; else no."""
    ca, cert, key = _tls_files(tmp_path)
    tls_port = free_port()
    with redis_server("--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                      "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"):
        conn = fast_redis(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}")
        try:
            assert await conn.execute("PING") == b"PONG"
        finally:
            await conn.aclose()
        untrusted = fast_redis(f"rediss://127.0.0.1:{tls_port}/0")  # the system CAs only
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.execute("PING")
        await untrusted.aclose()
        unchecked = fast_redis(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=none")
        assert await unchecked.execute("PING") == b"PONG"
        await unchecked.aclose()


def test_urls_redis_py_takes_are_parsed_alike() -> None:
    conn = PipelinedConnection.from_url("redis://u:p%40ss@cache.internal:6380?db=4")
    assert (conn.host, conn.port, conn.db) == ("cache.internal", 6380, 4)
    assert (conn.username, conn.password) == ("u", "p@ss")
    assert PipelinedConnection.from_url("redis://h/5?db=4").db == 5  # the path's database first
    unix = PipelinedConnection.from_url("unix:///run/redis.sock?db=1&password=pw")
    assert (unix.unix_path, unix.db, unix.password) == ("/run/redis.sock", 1, "pw")
    with pytest.raises(ValueError, match="redis://, rediss:// or unix://"):
        PipelinedConnection.from_url("http://127.0.0.1:6379")


async def test_reconnects_after_redis_restarts(private_redis: RedisServer) -> None:
    conn = PipelinedConnection.from_url(private_redis.url, timeout=1)
    try:
        assert await conn.execute("PING") == b"PONG"
        private_redis.stop()
        with pytest.raises(RedisConnectionError):
            await conn.execute("PING")
        private_redis.restart()
        assert await conn.execute("PING") == b"PONG"
    finally:
        await conn.aclose()


async def test_a_hung_redis_times_out_then_recovers(private_redis: RedisServer) -> None:
    conn = PipelinedConnection.from_url(private_redis.url, timeout=0.5)
    assert private_redis.process is not None
    try:
        assert await conn.execute("PING") == b"PONG"
        os.kill(private_redis.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises((RedisTimeoutError, RedisConnectionError)):
                await asyncio.wait_for(conn.execute("PING"), 5)
        finally:
            os.kill(private_redis.process.pid, signal.SIGCONT)
        assert await conn.execute("PING") == b"PONG"
    finally:
        await conn.aclose()


@pytest.mark.cluster
async def test_cluster_routes_by_slot_and_follows_moved(redis_cluster_servers: RedisClusterServers) -> None:
    host, port = redis_cluster_servers.startup_nodes[0]
    cluster = fast_redis(f"redis+cluster://{host}:{port}")
    assert isinstance(cluster, PipelinedCluster)
    try:
        keys = [f"tg:{{s{i}}}:moved" for i in range(20)]
        await asyncio.gather(*(cluster.execute_keyed(k, "SET", k, k) for k in keys))
        cluster._slots = [cluster._slots[0]] * len(cluster._slots)  # a stale map: MOVED everywhere
        values = await asyncio.gather(*(cluster.execute_keyed(k, "GET", k) for k in keys))
        assert values == [k.encode() for k in keys]
    finally:
        await cluster.aclose()


@pytest.mark.cluster
async def test_cluster_follows_ask_during_slot_migration(redis_cluster_servers: RedisClusterServers) -> None:
    ports = [p for _, p in redis_cluster_servers.startup_nodes]
    cluster = PipelinedCluster([("127.0.0.1", ports[0])])
    key = "tg:{ask-test}:k"
    try:
        await cluster.execute_keyed(key, "DEL", key)
        owner = cluster._slots[int(await cluster.execute("CLUSTER", "KEYSLOT", key))]
        slot = int(await cluster.execute("CLUSTER", "KEYSLOT", key))
        target = next(p for p in ports if p != owner[1])

        def cli(port: int, *args: str, stdin: str | None = None) -> str:
            return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                                  text=True, check=True, input=stdin).stdout.strip()

        source_id, target_id = cli(owner[1], "CLUSTER", "MYID"), cli(target, "CLUSTER", "MYID")
        cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        cli(owner[1], "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        try:  # the key is not on the source: it answers ASK for the target
            assert await cluster.execute_keyed(key, "SET", key, "moved-in") == b"OK"
            assert cli(target, "CLUSTER", "COUNTKEYSINSLOT", str(slot)) == "1"
            assert cli(owner[1], "CLUSTER", "COUNTKEYSINSLOT", str(slot)) == "0"
        finally:
            cli(target, stdin=f"ASKING\nDEL {key}\n")
            for port in ports:
                cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", source_id)
    finally:
        await cluster.aclose()


async def test_a_stalled_event_loop_is_not_a_hung_redis(redis_standalone: RedisServer) -> None:
    """The answer arrived while the loop was blocked: it must be read, not timed out."""
    conn = PipelinedConnection.from_url(redis_standalone.url, timeout=0.2)
    try:
        await conn.execute("PING")
        loop = asyncio.get_running_loop()
        pending = asyncio.ensure_future(conn.execute("PING"))
        # Right after the command is written, the loop is blocked past the deadline (the
        # gateway busy elsewhere) while Redis's answer lands in the socket.
        loop.call_soon(lambda: loop.call_soon(time.sleep, 0.6))
        assert await pending == b"PONG"
    finally:
        await conn.aclose()
