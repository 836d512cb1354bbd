"""A deployment and a headless Chromium for the console's browser tests (test_browser.py).

The deployment is what an operator runs: both planes (``tokengate control`` with the test
payment provider, ``tokengate serve``) over a vLLM simulator, the billing worker recording
usage in the ledger (SQLite here), a Redis server of its own (sign-in limits and routing
reports are not shared with other tests); packages and redemption codes made through the
admin API, the first platform admin with ``tokengate console create-admin``.

The browser is Debian's Chromium (``/usr/bin/chromium``; scripts/browser installs it, the
project never runs ``playwright install``) driven by Playwright's sync API, headless, at a
fixed viewport so the screenshots (docs/screenshots/ for the README) come out the same way each run.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.redis_servers import redis_server
from tests.support.catalogs import model, write_catalog
from tests.support.processes import (
    ROOT,
    Gateway,
    Sims,
    environment,
    start_billing_worker,
    start_gateway,
    start_sims,
    stop_process,
    tokengate,
)

CHROMIUM = Path(os.environ.get("TOKENGATE_CHROMIUM", "/usr/bin/chromium"))
# Each page's screenshot: under .tokengate/ (ignored by git) unless TOKENGATE_SCREENSHOTS names
# another folder; `TOKENGATE_SCREENSHOTS=docs/screenshots scripts/test tests/console/test_browser.py`
# refreshes the README's.
SCREENSHOTS = Path(os.environ.get("TOKENGATE_SCREENSHOTS") or ROOT / ".tokengate" / "screenshots")
VIEWPORT = {"width": 1280, "height": 800}
MODEL = "chat-model"
SERVED = "org/Chat-Model-7B"
TRIAL_CREDITS = 50_000
TEAM_CREDITS = 2_000_000
TEAM_PRICE = {"amount": 9900, "currency": "CNY"}
GIFT_CREDITS = 300_000
ADMIN_EMAIL = "ops@tokengate.test"
ADMIN_PASSWORD = "correct horse battery staple"
PASSWORD = "s3cret-enough-pass"


@dataclass
class Deployment:
    gateway: Gateway
    sims: Sims
    worker: subprocess.Popen[bytes]
    codes: list[str]  # redemption codes of the gift package, unused

    @property
    def url(self) -> str:
        """The console: on the control plane, as customers' browsers reach it."""
        return self.gateway.control + "/console"

    @property
    def endpoint(self) -> str:
        return self.sims.url(0)


def create_admin(gateway: Gateway) -> None:
    """The first platform admin, as an operator makes it: ``tokengate console create-admin``."""
    done = subprocess.run(
        tokengate("console", "create-admin", "--email", ADMIN_EMAIL, "--password-stdin"),
        input=ADMIN_PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
        env=environment(gateway.redis_url, gateway.database_url),
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("console-browser")
    with redis_server() as redis:
        sims = start_sims(1, SERVED, log=tmp / "sim.log")
        worker: subprocess.Popen[bytes] | None = None
        gateway: Gateway | None = None
        try:
            config = write_catalog(
                tmp / "models.yaml",
                {"east": [sims.url(0)]},
                [model(MODEL, ["east"], served_name=SERVED, tokenizer="tiktoken:cl100k_base")],
            )
            gateway = start_gateway(
                config,
                redis.url,
                tmp / "gateway.log",
                database_url=f"sqlite:///{tmp / 'ledger.db'}",
                TOKENGATE_PAYMENT_PROVIDER="test",
            )
            worker = start_billing_worker(
                gateway.redis_url, gateway.database_url, tmp / "worker.log", "--block-ms", "100"
            )
            with gateway.admin() as admin:
                for package in (
                    {
                        "id": "trial",
                        "name": "Trial",
                        "credits": TRIAL_CREDITS,
                        "valid_days": 14,
                        "trial": True,
                    },
                    {
                        "id": "team",
                        "name": "Team",
                        "credits": TEAM_CREDITS,
                        "valid_days": 365,
                        "price": TEAM_PRICE,
                        "for_sale": True,
                    },
                    {"id": "gift", "name": "Gift", "credits": GIFT_CREDITS, "valid_days": 30},
                ):
                    admin.post("/admin/packages", json=package).raise_for_status()
                minted = admin.post(
                    "/admin/codes", json={"package_id": "gift", "count": 3}
                ).raise_for_status()
            create_admin(gateway)
            yield Deployment(gateway, sims, worker, [c["code"] for c in minted.json()["data"]])
        finally:
            stop_process(worker)
            if gateway is not None:
                gateway.stop()
            sims.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: scripts/browser installs Debian's chromium (scripts/test runs it)"
        )
    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # as root, Chromium's sandbox refuses to start
    expect.set_options(timeout=15_000)  # assertions wait as long as actions (2 shared cores, CI)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture()
def new_context(chromium: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """Fresh browser profiles (cookies of their own), English, at the screenshots' viewport."""
    opened: list[BrowserContext] = []

    def make(**options: object) -> BrowserContext:
        context = chromium.new_context(viewport=VIEWPORT, locale="en-US", **options)  # type: ignore[arg-type]
        context.set_default_timeout(15_000)
        opened.append(context)
        return context

    yield make
    for context in opened:
        context.close()


def screenshot(page: Page, name: str) -> Path:
    """The page as the viewport shows it, kept as <SCREENSHOTS>/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled")
    assert path.stat().st_size > 5000, path  # a rendered page, not an empty image
    return path


def number(text: str) -> int:
    """The integer a page shows (``1,234,567`` or ``1 234 567`` read as 1234567)."""
    digits = re.sub(r"[,\s\u00a0\u202f_]", "", text.strip())
    assert re.fullmatch(r"-?\d+", digits), text
    return int(digits)


def eventually(check: Callable[[], bool], timeout: float = 15, reload: Page | None = None) -> None:
    """Until ``check()`` holds; ``reload`` is reloaded between tries (a page rendered on the server)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
        if reload is not None:
            reload.reload()
