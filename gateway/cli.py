"""The ``tokengate`` command: serve, sim, quickstart, billing (worker, reconcile, migrate), and
the admin commands over the admin API (accounts, keys, packages, purchases, usage)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from gateway.admincli import COMMANDS as ADMIN_COMMANDS
from gateway.catalog import CatalogError, load_catalog, stand_in_warnings

log = logging.getLogger("tokengate.catalog")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.server import GatewayHttpProtocol
    from gateway.settings import Settings

    config = args.config or Settings().config_path
    try:
        catalog = load_catalog(config, tokenizers=True)  # fail fast, naming the field and line at fault
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        return 2
    for warning in stand_in_warnings(catalog):  # once here, not once per worker
        log.warning("warning: %s: %s", config, warning)
    # Worker processes read their settings from the environment they inherit.
    os.environ["TOKENGATE_CONFIG"] = config
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http=GatewayHttpProtocol,  # httptools, one write per event-loop pass
        log_level=args.log_level,
        access_log=False,
        proxy_headers=False,  # the gateway never uses the client address: skip the rewrite
    )
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from gateway.quickstart import run

    try:
        return run(args.config, args.host, args.port, args.data_dir)
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        return 2


def _sim(argv: list[str]) -> int:
    from loadtest.vllm_sim import main as sim_main

    return sim_main(argv)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``tokengate: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tokengate: {message} (see: {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="tokengate", description="Token-metered OpenAI gateway")
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=None, help="models.yaml (default: $TOKENGATE_CONFIG)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="warning")

    quick = sub.add_parser("quickstart", help="run everything on embedded defaults")
    quick.add_argument("--config", default="models.yaml")
    quick.add_argument("--host", default="127.0.0.1")
    quick.add_argument("--port", type=int, default=8000, help="preferred port (next free if taken)")
    quick.add_argument("--data-dir", default=".tokengate")

    sub.add_parser("sim", help="run vLLM simulators (see: tokengate sim --help)", add_help=False)

    from billing.cli import add_parser as add_billing

    add_billing(sub)

    from gateway.admincli import add_parsers as add_admin

    add_admin(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sim":
        return _sim(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command in ADMIN_COMMANDS:
        from gateway.admincli import run as run_admin

        return run_admin(args)
    if args.command == "billing":
        from billing.cli import run as run_billing

        return run_billing(args)
    return _quickstart(args)


if __name__ == "__main__":
    raise SystemExit(main())
