"""A serving process loads what serving needs and no more.

Memory per worker is a benchmark figure (docs/benchmarks.md), never a timed test; what a
test can hold is which heavy modules a worker imports: alembic (11 MB) only while it must
migrate an embedded ledger, aiohttp (10 MB) never (the probes use the relay's client).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.gateway.conftest import Sims, write_config

_SERVE_ONCE = """
import asyncio, sys
from gateway.app import create_app

async def main():
    app = create_app()
    async with app.control.router.lifespan_context(app.control):
        assert app.handler is not None  # started: Redis, catalog, ledger check, probes
        await asyncio.sleep(0.3)  # a round of probes and scrapes
    print(",".join(sorted({name.split(".")[0] for name in sys.modules} & {"alembic", "aiohttp"})))

asyncio.run(main())
"""


def _heavy_modules_of_a_worker(config: Path, redis_url: str, ledger: Path) -> str:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": f"sqlite:///{ledger}",
           "TOKENGATE_CONFIG": str(config)}
    done = subprocess.run([sys.executable, "-c", _SERVE_ONCE], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def test_a_worker_loads_alembic_only_to_migrate_and_never_aiohttp(
        sims: Sims, redis_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "models.yaml", sims)
    ledger = tmp_path / "ledger.db"
    # A fresh embedded ledger: the worker migrates it, so alembic comes in (the check sees it).
    assert _heavy_modules_of_a_worker(config, redis_url, ledger) == "alembic"
    # Started again on the migrated ledger: neither.
    assert _heavy_modules_of_a_worker(config, redis_url, ledger) == ""
