"""Child processes the quickstart starts for itself: a real redis-server, simulators and bridges."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on loopback, else any free port."""
    if preferred:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (picked one by one, two picks could
    return the same port: each stays bound until all are picked)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:g}s")


def start_redis(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    """A redis-server that keeps every settled usage event: AOF with fsync always."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not on PATH: install Redis (e.g. apt install redis-server) "
            "or point REDIS_URL at a running Redis"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        "--daemonize", "no", "--logfile", str(data_dir / "redis.log"),
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process)
    return process


def start_simulators(
    servers: list[tuple[int, list[str]]], log: Path, max_model_len: int
) -> subprocess.Popen[bytes]:
    """One process serving a vLLM simulator per (port, served model names).

    ``max_model_len`` must be at least the catalog's largest ``context_window``, as a real
    vLLM's ``--max-model-len`` must: the gateway grants ``max_tokens`` up to the window.
    """
    args = [sys.executable, "-m", "loadtest.vllm_sim", "--max-model-len", str(max_model_len)]
    for port, names in servers:
        args += ["--port", str(port), "--model", ",".join(names)]
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    for port, _ in servers:
        wait_for_port(port, process)
    return process


def start_bridge(config: Path, cluster: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``tokengate bridge`` for one cluster of kind litellm, on loopback (litellm takes seconds
    to import: it is waited for)."""
    args = [sys.executable, "-m", "launcher.cli", "bridge", "--config", str(config), "--cluster", cluster,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, timeout=120)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; see {log}") from None
    return process


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
