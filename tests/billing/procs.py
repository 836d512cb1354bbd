"""Real processes for the billing tests: the simulator, the gateway, billing workers and a
PostgreSQL server of the test's own (which, unlike the shared one, a test may stop)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.embedded import free_port, wait_for_port

ADMIN_KEY = "tg-admin-billing-test"
MODEL = "chat-model"
SERVED = "org/Chat-Model"


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_sim(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "loadtest.vllm_sim",
        "--port",
        str(port),
        "--model",
        SERVED,
        "--ttft-ms",
        "5",
        "--itl-ms",
        "1",
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port, process)
    return process, port


def write_config(path: Path, sim_port: int) -> Path:
    path.write_text(
        f"""
clusters:
  - name: east
    region: r1
    endpoints: [{{url: "http://127.0.0.1:{sim_port}"}}]
models:
  - name: {MODEL}
    served_name: {SERVED}
    tokenizer: tiktoken:cl100k_base
    context_window: 4096
    price: {{input: 1, output: 2}}
    deployments: [east]
""",
        encoding="utf-8",
    )
    return path


@dataclass
class Gateway:
    base: str
    process: subprocess.Popen[bytes]
    log: Path
    redis_url: str

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=10, headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=10, headers={"Authorization": f"Bearer {key}"})

    def chat(self, key: str, max_tokens: int = 8) -> httpx.Response:
        with self.client(key) as client:
            return client.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": "Count to ten, please."}],
                },
            )


def environment(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "TOKENGATE_ADMIN_KEY": ADMIN_KEY,
        **extra,
    }


def start_gateway(config: Path, redis_url: str, database_url: str, log: Path, **extra: str) -> Gateway:
    port = free_port()
    env = environment(
        redis_url, database_url, TOKENGATE_REAPER_INTERVAL="0.2", TOKENGATE_AUTH_CACHE_SECONDS="1", **extra
    )
    args = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gateway exited:\n" + log.read_text())
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return Gateway(base, process, log, redis_url)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(process)
    raise RuntimeError("gateway not ready:\n" + log.read_text())


def start_worker(redis_url: str, database_url: str, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "gateway.cli", "billing", "worker", "--block-ms", "100"]
    with log.open("ab") as out:
        return subprocess.Popen(
            args, env=environment(redis_url, database_url), stdout=out, stderr=subprocess.STDOUT
        )


def reconcile(redis_url: str, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return billing_command(redis_url, database_url, "reconcile", *args)


def billing_command(redis_url: str, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``tokengate billing ARGS`` in a subprocess; its completed process."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "billing", *args],
        env=environment(redis_url, database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class PostgresServer:
    """A PostgreSQL server of the test's own (initdb in a temporary directory, trust auth).

    As root it runs as the ``postgres`` user (PostgreSQL refuses to run as root).
    """

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="tg-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> PostgresServer:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync"
        )
        return self.start()

    def start(self) -> PostgresServer:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "log"),
            "-w",
            "start",
        )
        return self

    def stop(self, mode: str = "immediate") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("fast")
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin() -> Path:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    config = shutil.which("pg_config")
    if config:
        bindir = subprocess.run([config, "--bindir"], capture_output=True, text=True, check=False)
        path = Path(bindir.stdout.strip())
        if (path / "pg_ctl").exists() and (path / "initdb").exists():
            return path
    raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
