"""Real processes for the billing tests: the simulator, both planes of the gateway, billing
workers and a PostgreSQL server of the test's own (which, unlike the shared one, a test may
stop). Starting tokengate is tests/support's; what is here is the billing tier's defaults."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx

from launcher.embedded import free_port
from tests.support.catalogs import model, write_catalog
from tests.support.processes import ADMIN_KEY, billing_command, start_billing_worker, start_sims, stop_process
from tests.support.processes import Gateway as Planes
from tests.support.processes import start_gateway as start_both_planes

__all__ = ["ADMIN_KEY", "billing_command", "stop_process"]

MODEL = "chat-model"
SERVED = "org/Chat-Model"


def start_sim(log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """One simulator serving ``SERVED``: its process and port."""
    sims = start_sims(1, SERVED, "--ttft-ms", "5", "--itl-ms", "1", log=log)
    return sims.process, sims.ports[0]


def write_config(path: Path, sim_port: int) -> Path:
    """One cluster (east) of one simulator, serving ``MODEL``."""
    return write_catalog(path, {"east": [f"http://127.0.0.1:{sim_port}"]}, [
        model(MODEL, ["east"], served_name=SERVED, tokenizer="tiktoken:cl100k_base"),
    ])


@dataclasses.dataclass
class Gateway(Planes):
    """Both planes (``base``: the data plane, ``control``: the admin API), and one chat request."""

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


def start_gateway(config: Path, redis_url: str, database_url: str, log: Path, **extra: str) -> Gateway:
    """Both planes on ``database_url``, with a fast reaper and a short key cache."""
    env = {"TOKENGATE_REAPER_INTERVAL": "0.2", "TOKENGATE_AUTH_CACHE_SECONDS": "1", **extra}
    planes = start_both_planes(config, redis_url, log, database_url=database_url, **env)
    return Gateway(**{f.name: getattr(planes, f.name) for f in dataclasses.fields(planes)})


def start_worker(redis_url: str, database_url: str, log: Path) -> subprocess.Popen[bytes]:
    return start_billing_worker(redis_url, database_url, log, "--block-ms", "100")


def reconcile(redis_url: str, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return billing_command(redis_url, database_url, "reconcile", *args)


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
