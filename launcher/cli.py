"""The ``tokengate`` command: serve (data plane), control (control plane), bridge (a provider
through litellm), sim, quickstart, billing (worker, reconcile, migrate), and the admin
commands over the admin API (accounts, keys, packages, purchases, usage).

The launcher sits above ``gateway/``, ``control/`` and ``billing/``: each command imports
only what its process runs, so a data-plane worker never loads the control plane's libraries.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from gateway.catalog import CatalogError, load_catalog, stand_in_warnings
from launcher.admincli import COMMANDS as ADMIN_COMMANDS

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


def _control(args: argparse.Namespace) -> int:
    import uvicorn

    if args.config:  # checked on reloads (the data plane's copy must be the same file)
        os.environ["TOKENGATE_CONFIG"] = args.config
    if not (os.environ.get("TOKENGATE_PUBLIC_URL") or os.environ.get("TOKENGATE_CONTROL_URL")):
        # Checkout links point here unless the operator names the public address.
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        os.environ["TOKENGATE_PUBLIC_URL"] = f"http://{f'[{host}]' if ':' in host else host}:{args.port}"

    uvicorn.run(
        "control.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        log_level=args.log_level,
        access_log=False,
        proxy_headers=False,
    )
    return 0


def _bridge(args: argparse.Namespace) -> int:
    from bridge.main import run

    config = args.config or os.environ.get("TOKENGATE_CONFIG", "models.yaml")
    return run(config, args.cluster, args.host, args.port, args.log_level)


def _quickstart(args: argparse.Namespace) -> int:
    from launcher.quickstart import run

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


def _add_billing(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``tokengate billing ...``: defined here, so that parsing loads none of the ledger."""
    billing = sub.add_parser(
        "billing",
        help="the ledger: worker, reconcile, migrate",
        description="The billing ledger. Settings come from the environment: REDIS_URL (default "
        "redis://127.0.0.1:6379/0) and DATABASE_URL (default sqlite:///.tokengate/ledger.db); "
        "the quickstart prints the values of the instance it started.",
    )
    commands = billing.add_subparsers(dest="billing_command", required=True)

    worker = commands.add_parser("worker", help="record the usage streams in the ledger")
    worker.add_argument("--consumer", default=None, help="consumer name (default: host-pid)")
    worker.add_argument("--batch", type=int, default=None,
                        help="entries read per usage stream at a time, one transaction for all "
                             "(default 1000)")
    worker.add_argument("--block-ms", type=int, default=1000)
    worker.add_argument(
        "--claim-idle-ms",
        type=int,
        default=30_000,
        help="claim entries another worker held unacked this long",
    )
    worker.add_argument("--max-deliveries", type=int, default=10)
    worker.add_argument(
        "--linger-ms",
        type=int,
        default=200,
        help="after a partial batch, wait this long before reading again (batches the ledger writes)",
    )

    reconcile = commands.add_parser("reconcile", help="compare Redis with the ledger and repair")
    reconcile.add_argument("--dry-run", action="store_true", help="report drift, change nothing")
    reconcile.add_argument("--account", action="append", default=None, help="only these accounts")
    reconcile.add_argument(
        "--grace", type=float, default=10.0, help="seconds to let gateways replay lost usage before a rebuild"
    )

    migrate_cmd = commands.add_parser("migrate", help="migrate the ledger database")
    migrate_cmd.add_argument("--revision", default="head")

    alerts = commands.add_parser(
        "alerts",
        help="raise and deliver alerts (the billing worker also does, every TOKENGATE_ALERT_INTERVAL s)",
    )
    alerts.add_argument("--once", action="store_true", help="one pass, then exit (cron, tests)")


def _add_console(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``tokengate console create-admin``: defined here, so that parsing loads no control plane."""
    console = sub.add_parser("console", help="the web console: create-admin",
                             description="The web console's people, in the ledger at DATABASE_URL.")
    commands = console.add_subparsers(dest="console_command", required=True)
    create = commands.add_parser("create-admin", help="create a platform admin of the console "
                                 "(the password is prompted for, never an argument)")
    create.add_argument("--email", required=True)
    create.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input")


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="tokengate", description="Token-metered OpenAI gateway")
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the data plane (the OpenAI API)")
    serve.add_argument("--config", default=None, help="models.yaml (default: $TOKENGATE_CONFIG)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="warning")

    control = sub.add_parser("control", help="run the control plane (admin API, self-service ledger)")
    control.add_argument("--config", default=None,
                         help="models.yaml, checked before a reload (default: $TOKENGATE_CONFIG)")
    control.add_argument("--host", default="127.0.0.1",
                         help="keep it on a private interface: it serves the admin API")
    control.add_argument("--port", type=int, default=8001)
    control.add_argument("--workers", type=int, default=1)
    control.add_argument("--log-level", default="warning")

    bridge = sub.add_parser(
        "bridge", help="serve a cluster of kind: litellm (a provider such as Anthropic) to the data plane",
        description="An OpenAI-compatible server in front of the provider of one cluster of kind: "
        "litellm in models.yaml, with the running usage on every chunk; the cluster's endpoints "
        "point at it. The provider key comes from the environment variable the cluster names.")
    bridge.add_argument("--config", default=None, help="models.yaml (default: $TOKENGATE_CONFIG)")
    bridge.add_argument("--cluster", required=True, help="the cluster of kind: litellm to serve")
    bridge.add_argument("--host", default="127.0.0.1",
                        help="loopback or a private address only: it spends the provider account")
    bridge.add_argument("--port", type=int, default=9100)
    bridge.add_argument("--log-level", default="warning")

    quick = sub.add_parser("quickstart", help="run everything on embedded defaults")
    quick.add_argument("--config", default="models.yaml")
    quick.add_argument("--host", default="127.0.0.1")
    quick.add_argument("--port", type=int, default=8000, help="preferred port (next free if taken)")
    quick.add_argument("--data-dir", default=".tokengate")

    sub.add_parser("sim", help="run vLLM simulators (see: tokengate sim --help)", add_help=False)

    _add_billing(sub)
    _add_console(sub)

    from launcher.admincli import add_parsers as add_admin

    add_admin(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sim":
        return _sim(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "control":
        return _control(args)
    if args.command == "bridge":
        return _bridge(args)
    if args.command in ADMIN_COMMANDS:
        from launcher.admincli import run as run_admin

        return run_admin(args)
    if args.command == "billing":
        from billing.commands import run as run_billing

        return run_billing(args)
    if args.command == "console":
        from control.console.admin_cli import run as run_console

        return run_console(args)
    return _quickstart(args)


if __name__ == "__main__":
    raise SystemExit(main())
