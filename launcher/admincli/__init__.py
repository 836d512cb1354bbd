"""``tokengate accounts | keys | packages | purchases | usage | orders | codes | audit``: the admin
API from a terminal.

Settings: ``TOKENGATE_CONTROL_URL`` (default ``http://127.0.0.1:8001``; ``--url`` overrides)
and ``TOKENGATE_ADMIN_KEY`` (``--admin-key`` overrides). Tables by default, the API's JSON
with ``--json``. An error is one sentence on stderr and a non-zero exit: 1 when the API
refused or could not be reached, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys

from launcher.admincli import accounts, codes, commerce, orders
from launcher.admincli.client import DEFAULT_URL, AdminClient, AdminError

COMMANDS = ("accounts", "keys", "packages", "purchases", "usage", "orders", "audit", "codes")


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("admin API")
    group.add_argument("--url", default=None,
                       help=f"the control plane (default: $TOKENGATE_CONTROL_URL or {DEFAULT_URL})")
    group.add_argument("--admin-key", default=None, help="the admin key (default: $TOKENGATE_ADMIN_KEY)")
    group.add_argument("--json", action="store_true", help="print the API's JSON as it is")
    return common


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = common_options()
    accounts.register(sub, common)
    commerce.register(sub, common)
    orders.register(sub, common)
    codes.register(sub, common)


def client_of(args: argparse.Namespace) -> AdminClient:
    url = args.url or os.environ.get("TOKENGATE_CONTROL_URL") or DEFAULT_URL
    key = args.admin_key or os.environ.get("TOKENGATE_ADMIN_KEY")
    if not key:
        raise AdminError("no admin key: set TOKENGATE_ADMIN_KEY or pass --admin-key "
                         "(the quickstart prints it)", 2)
    return AdminClient(url, key)


def run(args: argparse.Namespace) -> int:
    """Run one admin command; never lets a traceback reach the user."""
    try:
        args.handler(client_of(args), args)
        sys.stdout.flush()
    except AdminError as error:
        print(f"tokengate: {error.sentence}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:
        print("tokengate: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tokengate ... | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as error:  # a bug of ours or an answer we did not expect: still one line
        print(f"tokengate: unexpected failure ({error.__class__.__name__}: {error})", file=sys.stderr)
        return 1
    return 0
