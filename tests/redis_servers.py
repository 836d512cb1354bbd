"""Real Redis servers for tests: a standalone server or a 3-master Redis Cluster.

Each server runs from ``redis-server`` on PATH, on a free loopback port, in its own
temporary directory, without persistence, and is killed when the test session (or the
``with`` block) ends. Tests may ``FLUSHALL`` these servers freely: nothing else uses them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from launcher.embedded import free_port  # another process may still take it: start retries

STARTUP_TIMEOUT_S = 10.0


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.stdout.strip()


def _wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class RedisServer:
    """One redis-server process on 127.0.0.1:<port>."""

    def __init__(self, *extra_args: str) -> None:
        self.extra_args = extra_args
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="tg-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int | None = None) -> RedisServer:
        """Start on ``port``, or on a free port (retrying if another process takes it)."""
        for _attempt in range(5):
            self.port = port or free_port()
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.dir),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--logfile",
                    str(self.dir / "redis.log"),
                    *self.extra_args,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            process = self.process
            try:
                _wait(self._up_or_exited, "redis-server")
            except RuntimeError:
                self.stop()
                raise
            if process.poll() is None:
                return self
        raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")

    def restart(self) -> RedisServer:
        """Kill and start again on the same port: without persistence, with no data."""
        self.stop()
        return self.start(self.port)

    def _up_or_exited(self) -> bool:
        return self.process is None or self.process.poll() is not None or self.ping()

    def ping(self) -> bool:
        return _cli(self.port, "PING", timeout=2.0) == "PONG"

    def stop(self) -> None:
        """Kill the server (SIGKILL: a crash, which is what fault tests want anyway)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _cluster_ok(port: int) -> Callable[[], bool]:
    return lambda: "cluster_state:ok" in _cli(port, "CLUSTER", "INFO")


class RedisClusterServers:
    """A Redis Cluster of ``masters`` masters and no replicas on free loopback ports."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            )
            for _ in range(masters)
        ]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterServers:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            done = subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}")
            for node in self.nodes:
                _wait(_cluster_ok(node.port), f"cluster_state:ok on {node.port}")
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@contextlib.contextmanager
def redis_server(*extra_args: str) -> Iterator[RedisServer]:
    """A standalone redis-server for the duration of the block."""
    server = RedisServer(*extra_args).start()
    try:
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[RedisClusterServers]:
    """A real Redis Cluster (``cluster_state:ok``) for the duration of the block."""
    cluster = RedisClusterServers(masters).start()
    try:
        yield cluster
    finally:
        cluster.cleanup()
