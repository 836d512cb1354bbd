"""A data-plane worker loads what serving needs and none of the control plane's libraries.

Memory per worker is a benchmark figure (docs/benchmarks.md), never a timed test; what a
test can hold is which modules a worker imports. Here a worker is built as ``tokengate
serve`` builds it (the launcher's parser included), started (Redis, catalog, tokenizers,
probes), and serves an inference request, self-service (forwarded) and its probes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.gateway.conftest import CHAT_MODEL, Gateway, Sims, write_config

FORBIDDEN = ("sqlalchemy", "fastapi", "starlette", "alembic", "billing", "control", "asyncpg",
             "aiosqlite", "aiohttp", "jinja2", "litellm", "bridge")

_SERVE_ONCE = """
import asyncio, sys, orjson
from launcher.cli import parser
from gateway.app import create_app

parser().parse_args(["serve"])  # what `tokengate serve` runs before uvicorn takes over

async def call(app, method, path, body=b"", key=None):
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if key:
        headers.append((b"authorization", b"Bearer " + key.encode()))
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1)}
    sent = [{"type": "http.request", "body": body, "more_body": False}]
    async def receive():
        return sent.pop() if sent else await asyncio.Event().wait()
    answer = {}
    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
    await app(scope, receive, send)
    return answer["status"]

async def main():
    app = create_app()
    startup = [{"type": "lifespan.shutdown"}, {"type": "lifespan.startup"}]
    done = []
    async def receive():
        return startup.pop()
    async def send(message):
        done.append(message["type"])
    lifespan = asyncio.create_task(app({"type": "lifespan"}, receive, send))
    while not done:
        await asyncio.sleep(0.01)
    assert done == ["lifespan.startup.complete"], done
    key = sys.argv[1]
    chat = orjson.dumps({"model": sys.argv[2], "max_tokens": 2,
                         "messages": [{"role": "user", "content": "hi"}]})
    statuses = [await call(app, "POST", "/v1/chat/completions", chat, key),
                await call(app, "GET", "/v1/me", key=key),
                await call(app, "GET", "/readyz"), await call(app, "GET", "/metrics")]
    assert statuses == [200, 200, 200, 200], statuses
    await asyncio.sleep(1.5)  # a round of probes, scrapes and routing reports
    await lifespan
    print(",".join(sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[3].split(",")))))

asyncio.run(main())
"""


def _with_a_bridged_cluster(config: Path) -> Path:
    """The catalog plus a cluster of kind litellm and a model on it: the data plane relays to
    its bridge as to vLLM and loads none of litellm (the bridge need not run here)."""
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc["clusters"].append({"name": "provider", "kind": "litellm", "provider": "anthropic",
                            "api_key_env": "NO_SUCH_KEY", "endpoints": [{"url": "http://127.0.0.1:9"}]})
    doc["models"].append({"name": "bridged", "context_window": 1000, "price": {"input": 1, "output": 1},
                          "deployments": ["provider"]})
    config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return config


def test_a_data_plane_worker_imports_none_of_the_control_planes_libraries(
        gateway: Gateway, sims: Sims, tmp_path: Path) -> None:
    key = gateway.new_key()
    env = {**os.environ, "REDIS_URL": gateway.redis_url, "TOKENGATE_CONTROL_URL": gateway.control,
           "TOKENGATE_CONFIG": str(_with_a_bridged_cluster(write_config(tmp_path / "models.yaml", sims)))}
    env.pop("DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-c", _SERVE_ONCE, key, CHAT_MODEL, ",".join(FORBIDDEN)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1:] in ([], [""]), done.stdout
