"""What ``tokengate console create-admin --email E`` runs (its arguments: launcher/cli.py):
a platform admin of the console (the first one is made this way), in the ledger at
``DATABASE_URL`` as the ``tokengate billing`` commands.

The password comes from a prompt (typed twice) or, for scripts, from the first line of
standard input with ``--password-stdin``; never from the command line, where other users of
the machine and the shell's history would see it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys

from billing.errors import Conflict
from billing.service import Billing
from gateway.contract import BadRequest, Settings, connect_redis


def read_password(from_stdin: bool) -> str | None:
    """The password (stdin's first line, or typed twice at a prompt); None when it cannot be read."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        print("tokengate: no terminal to prompt on: pass --password-stdin", file=sys.stderr)
        return None
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        print("tokengate: the passwords differ", file=sys.stderr)
        return None
    return first


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    password = read_password(args.password_stdin)
    if password is None:
        return 2
    return asyncio.run(_create_admin(args.email, password, Settings()))


async def _create_admin(email: str, password: str, settings: Settings) -> int:
    redis = connect_redis(settings.redis_url)  # unused by this command; Billing is built whole
    billing = Billing.build(settings.database_url, redis)
    try:
        await billing.prepare()  # an embedded SQLite ledger is migrated first
        user = await billing.users.create_admin(email, password)
    except BadRequest as error:
        print(f"tokengate: {error.message}", file=sys.stderr)
        return 2
    except Conflict:
        print(f"tokengate: a user with the email {email.strip().lower()!r} exists", file=sys.stderr)
        return 1
    finally:
        await billing.close()
        await redis.aclose()
    print(f"admin {user.email} created ({user.id}); sign in at /console/signin")
    return 0
