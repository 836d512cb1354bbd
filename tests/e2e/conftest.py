"""Real processes for the e2e tier: two vLLM servers (CPU build) as two clusters, a real
redis-server, the gateway (``tokengate serve``) with its SQLite ledger, and the billing
worker (``tokengate billing worker``), all on loopback. Accounts are funded as customers
are: a package bought through the admin API (ledger first, then Redis).

vLLM runs from its own virtualenv (scripts/e2e/venv), never from the gateway's: the tests
find its interpreter in ``TOKENGATE_E2E_PYTHON``, which ``scripts/e2e/test`` sets. The tiny
model is built from nothing by scripts/e2e/build_tiny_model.py once per session, and its
directory is also the gateway's estimating tokenizer (``tokenizer: hf:<dir>``).

Both vLLM servers start in parallel, once per session. A test that kills one
(test_zz_failover.py) runs last.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from gateway import keyspace
from gateway.usage import UsageEvent
from launcher.embedded import free_port
from tests.support.catalogs import model, write_catalog
from tests.support.processes import Gateway as Planes
from tests.support.processes import start_billing_worker, stop_process
from tests.support.processes import start_gateway as start_both_planes

try:  # tests/ is a package, or the repository root is on sys.path
    from tests.redis_servers import RedisServer
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path
    from redis_servers import RedisServer  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
BUILDER = ROOT / "scripts" / "e2e" / "build_tiny_model.py"

PYTHON_ENV = "TOKENGATE_E2E_PYTHON"  # the e2e venv's python (vLLM); set by scripts/e2e/test
REQUIRED_ENV = "TOKENGATE_E2E_REQUIRED"  # "1": a missing vLLM environment fails, not skips
START_TIMEOUT = float(os.environ.get("TOKENGATE_E2E_START_TIMEOUT", "600"))

SERVED = "tiny-llama"  # what both vLLM servers serve
HF_MODEL = "tiny-hf"  # public name estimated with the model's own tokenizer (hf:<dir>)
TIKTOKEN_MODEL = "tiny-tiktoken"  # the same upstream, estimated with tiktoken:cl100k_base
CONTEXT = 8192
CLUSTERS = ("east", "west")
PRICES = {HF_MODEL: (1, 2), TIKTOKEN_MODEL: (1, 1)}  # (input, output) credits per token

# What the session measured, printed at its end (pytest_terminal_summary).
TIMINGS: dict[str, float] = {}

# The tests label each request with their own id, sent as x-client-request-id; the gateway
# answers with its own x-request-id (the id of the usage record). Every response through the
# gateway is remembered here, so a test can find its request's usage by its own label.
GATEWAY_IDS: dict[str, str] = {}


def remember(response: httpx.Response) -> None:
    """Map the response's x-client-request-id to the gateway's x-request-id."""
    label = response.headers.get("x-client-request-id")
    if label:
        GATEWAY_IDS[label] = response.headers["x-request-id"]


def gateway_id(label: str) -> str:
    """The gateway's request id of the request the test labelled ``label``."""
    try:
        return GATEWAY_IDS[label]
    except KeyError:
        raise AssertionError(f"no response through the gateway carried the label {label!r}") from None


# --- vLLM ---------------------------------------------------------------------------------


@dataclass
class VLLMServer:
    cluster: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    started_at: float = field(default_factory=time.monotonic)
    clients: list[openai.OpenAI] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> openai.OpenAI:
        """The official client straight to this vLLM server (no gateway); closed at the end."""
        client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        self.clients.append(client)
        return client

    def alive(self) -> bool:
        return self.process.poll() is None

    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus counters and gauges, summed over label sets, by metric name."""
        text = httpx.get(self.url + "/metrics", timeout=10).raise_for_status().text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("vllm:"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return values

    def running(self) -> int:
        return int(self.metrics().get("vllm:num_requests_running", 0))

    def kill(self) -> None:
        """SIGKILL the server and its engine processes (a crash)."""
        _signal_group(self.process, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=20)
        else:  # the API server is gone; make sure no engine process of its group lingers
            _signal_group(self.process, signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # vLLM was started in a session (group) of its own


try:
    import ctypes

    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except (ImportError, OSError):  # not Linux/glibc: no parent-death signal
    _LIBC = None
_PR_SET_PDEATHSIG = 1


def _detach() -> None:
    """In the child: a process group of its own (killed as a whole), and SIGTERM when the
    test process dies, so a killed pytest leaves no vLLM server behind."""
    os.setsid()
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def vllm_env(python: Path) -> dict[str, str]:
    """vLLM's environment: offline, no usage reporting, a small KV cache, one thread."""
    venv = python.parent.parent
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
        # Two servers share the machine's cores: no pinning, one OpenMP thread each.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        # vLLM's own caches beside its venv, not in the user's ~/.cache/vllm.
        "VLLM_CACHE_ROOT": str(venv / "vllm-cache"),
        "PYTHONUNBUFFERED": "1",
    }


def start_vllm(python: Path, model_dir: Path, cluster: str, log_dir: Path) -> VLLMServer:
    port = free_port()
    args = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", SERVED,
        "--dtype", "float32", "--max-model-len", str(CONTEXT),
        "--host", "127.0.0.1", "--port", str(port),
        # No torch.compile warm-up: the same start time (~25 s) without a compile cache.
        "--enforce-eager",
        # usage.prompt_tokens_details.cached_tokens, which the gateway records.
        "--enable-prompt-tokens-details",
        "--disable-uvicorn-access-log",
    ]
    log = log_dir / f"vllm-{cluster}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, env=vllm_env(python), cwd=log_dir, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=_detach,
        )
    return VLLMServer(cluster, port, process, log)


def wait_ready(servers: Iterable[VLLMServer], timeout: float) -> None:
    pending = list(servers)
    deadline = time.monotonic() + timeout
    while pending:
        for server in list(pending):
            if not server.alive():
                raise RuntimeError(f"vLLM ({server.cluster}) exited:\n{server.log_tail()}")
            try:
                ok = httpx.get(server.url + "/v1/models", timeout=2).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                TIMINGS[f"vLLM {server.cluster} ready (s)"] = time.monotonic() - server.started_at
                pending.remove(server)
        if pending and time.monotonic() > deadline:
            tails = "\n\n".join(f"--- {s.cluster}:\n{s.log_tail()}" for s in pending)
            raise RuntimeError(f"vLLM not ready after {timeout:g}s:\n{tails}")
        time.sleep(0.5)


# --- the gateway --------------------------------------------------------------------------


def write_config(path: Path, servers: list[VLLMServer], model_dir: Path) -> Path:
    """One cluster per vLLM server; the same upstream model under two public names."""
    return write_catalog(path, {s.cluster: [s.url] for s in servers}, [
        model(name, [s.cluster for s in servers], served_name=SERVED, tokenizer=tokenizer,
              context_window=CONTEXT, price=PRICES[name])
        for name, tokenizer in ((HF_MODEL, f"hf:{model_dir}"), (TIKTOKEN_MODEL, "tiktoken:cl100k_base"))
    ])


@dataclass
class Gateway(Planes):
    """Both planes (tests/support), with customers as the e2e tier makes them and official
    clients that remember the gateway's request ids (see ``gateway_id``)."""

    clients: list[openai.OpenAI] = field(default_factory=list)

    def openai(self, key: str, **options: object) -> openai.OpenAI:
        """The official client through the gateway (no retries); closed at the end."""
        http = httpx.Client(timeout=120, event_hooks={"response": [remember]})
        settings: dict[str, Any] = {"max_retries": 0, "timeout": 120, "http_client": http, **options}
        client = openai.OpenAI(base_url=self.v1, api_key=key, **settings)
        self.clients.append(client)
        return client

    def buy_key(self, credits: int = 10_000_000) -> tuple[str, str]:
        """(key, account id): a fresh account that bought a package of ``credits`` through the
        admin API (ledger first, then Redis), and a key."""
        with self.admin() as admin:
            account = admin.post("/admin/accounts", json={"name": "e2e"}).raise_for_status().json()
            key = admin.post(f"/admin/accounts/{account['id']}/keys", json={"name": "e2e"})
            secret: str = key.raise_for_status().json()["key"]
            package = admin.post("/admin/packages", json={
                "name": f"e2e {credits}", "credits": credits, "valid_days": 30,
            }).raise_for_status().json()
            admin.post(f"/admin/accounts/{account['id']}/purchases", json={
                "package_id": package["id"], "order_id": f"e2e-{uuid.uuid4().hex}",
            }).raise_for_status()
        return secret, account["id"]

    def me(self, key: str) -> dict[str, object]:
        """``GET /v1/me`` at the public URL (the data plane forwards it to the control plane)."""
        reply = httpx.get(self.v1 + "/me", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        data: dict[str, object] = reply.raise_for_status().json()
        return data

    def metrics_text(self) -> str:
        return httpx.get(self.base + "/metrics", timeout=10).raise_for_status().text

    def endpoints(self) -> list[dict[str, Any]]:
        """``GET /admin/endpoints`` (control plane): the data-plane workers' merged reports."""
        with self.admin() as admin:
            rows: list[dict[str, Any]] = admin.get("/admin/endpoints").raise_for_status().json()["data"]
        return rows

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


def start_gateway(config: Path, redis_url: str, database_url: str, log: Path) -> Gateway:
    """Both planes on the SQLite ledger, with timeouts for a slow CPU vLLM."""
    planes = start_both_planes(
        config, redis_url, log, database_url=database_url,
        TOKENGATE_FIRST_BYTE_TIMEOUT="60",
        TOKENGATE_IDLE_TIMEOUT="30",
        # On a busy shared machine a new upstream connection can take seconds (uvloop
        # resolves even "127.0.0.1" in its thread pool). A dead server refuses at once.
        TOKENGATE_CONNECT_TIMEOUT="20",
        HF_HUB_OFFLINE="1",
    )
    return Gateway(**{f.name: getattr(planes, f.name) for f in fields(planes)})


# --- usage events (what the billing ledger will consume) ----------------------------------


class UsageStreams:
    """Reads the usage events the gateway appended to the Redis streams."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def all(self) -> dict[str, UsageEvent]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            found: dict[str, UsageEvent] = {}
            for stream in keyspace.all_usage_streams():
                for _id, fields in client.xrange(stream):
                    event = UsageEvent.from_fields(fields)
                    assert event.request_id not in found, f"two usage events for {event.request_id}"
                    found[event.request_id] = event
            return found
        finally:
            client.close()

    def wait(self, labels: Iterable[str], timeout: float = 30) -> dict[str, UsageEvent]:
        """The events of the requests these labels name (see ``gateway_id``), by label,
        waiting for settlement (after the last byte)."""
        wanted = {label: gateway_id(label) for label in labels}
        deadline = time.monotonic() + timeout
        while True:
            events = self.all()
            if set(wanted.values()) <= events.keys():
                return {label: events[rid] for label, rid in wanted.items()}
            if time.monotonic() > deadline:
                missing = sorted(label for label, rid in wanted.items() if rid not in events)
                raise AssertionError(f"no usage event for {missing}")
            time.sleep(0.05)

    def one(self, request_id: str, timeout: float = 30) -> UsageEvent:
        return self.wait([request_id], timeout)[request_id]


class Ledger:
    """Reads the SQLite ledger the billing worker writes (usage records and ledger legs)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str, args: list[str]) -> list[sqlite3.Row]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as db:
            db.row_factory = sqlite3.Row
            return db.execute(sql, args).fetchall()

    def records(self, labels: Iterable[str], timeout: float = 60) -> dict[str, sqlite3.Row]:
        """The usage records of the requests these labels name, by label, waiting for the
        worker to write them."""
        wanted = {label: gateway_id(label) for label in labels}
        ids = sorted(set(wanted.values()))
        marks = ",".join("?" * len(ids))
        deadline = time.monotonic() + timeout
        while True:
            rows = self._query(f"SELECT * FROM usage_records WHERE request_id IN ({marks})", ids)
            found = {row["request_id"]: row for row in rows}
            if len(found) == len(ids):
                return {label: found[rid] for label, rid in wanted.items()}
            if time.monotonic() > deadline:
                missing = sorted(label for label, rid in wanted.items() if rid not in found)
                raise AssertionError(f"no usage record in the ledger for {missing}")
            time.sleep(0.1)

    def usage_debits(self, labels: Iterable[str]) -> int:
        """What the ledger's usage legs charged for the labelled requests, in credits."""
        entries = [f"usage:{gateway_id(label)}" for label in sorted(set(labels))]
        marks = ",".join("?" * len(entries))
        rows = self._query(
            f"SELECT COALESCE(SUM(amount), 0) AS total FROM ledger_legs "
            f"WHERE book = 'usage' AND entry_id IN ({marks})", entries,
        )
        return int(rows[0]["total"])


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_python() -> Path:
    value = os.environ.get(PYTHON_ENV)
    if not value:
        message = f"{PYTHON_ENV} is not set: run the e2e tier with scripts/e2e/test"
        if os.environ.get(REQUIRED_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    python = Path(value)
    if not python.is_file():
        pytest.fail(f"{PYTHON_ENV}={value} is not a file")
    return python


@pytest.fixture(scope="session")
def tiny_model(e2e_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, built from nothing (tokenizer trained here, random weights)."""
    out = tmp_path_factory.mktemp("tiny-model") / "model"
    started = time.monotonic()
    done = subprocess.run(
        [str(e2e_python), str(BUILDER), str(out)], env=vllm_env(e2e_python),
        capture_output=True, text=True, timeout=300, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the tiny model failed:\n{done.stdout}\n{done.stderr}")
    TIMINGS["tiny model built (s)"] = time.monotonic() - started
    return out


@pytest.fixture(scope="session")
def vllm_servers(
    e2e_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[VLLMServer]]:
    """Two vLLM servers, one per cluster, started in parallel."""
    log_dir = tmp_path_factory.mktemp("vllm")
    servers: list[VLLMServer] = []
    try:
        for cluster in CLUSTERS:
            servers.append(start_vllm(e2e_python, tiny_model, cluster, log_dir))
        wait_ready(servers, START_TIMEOUT)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ledger") / "ledger.db"


@pytest.fixture(scope="session")
def gateway(
    vllm_servers: list[VLLMServer],
    tiny_model: Path,
    redis_standalone: RedisServer,
    ledger_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    config = write_config(tmp / "models.yaml", vllm_servers, tiny_model)
    database_url = f"sqlite:///{ledger_path}"
    gw = start_gateway(config, redis_standalone.url, database_url, tmp / "gateway.log")
    worker = start_billing_worker(redis_standalone.url, database_url, tmp / "billing-worker.log",
                                  "--linger-ms", "50")
    try:
        yield gw
    finally:
        gw.close_clients()
        stop_process(worker)
        gw.stop()


@pytest.fixture(scope="session")
def usage(gateway: Gateway) -> UsageStreams:
    return UsageStreams(gateway.redis_url)


@pytest.fixture(scope="session")
def ledger(gateway: Gateway, ledger_path: Path) -> Ledger:
    return Ledger(ledger_path)


@pytest.fixture()
def key(gateway: Gateway) -> str:
    return gateway.buy_key()[0]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "e2e timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f}")
