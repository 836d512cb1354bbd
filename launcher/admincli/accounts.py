"""``tokengate accounts`` and ``tokengate keys``."""

from __future__ import annotations

import argparse
import urllib.parse
from typing import Any

from launcher.admincli.client import AdminClient, AdminError
from launcher.admincli.output import Column, as_json, field, next_page, pairs, table

ACCOUNT_COLUMNS: list[Column] = [
    ("ID", field("id")), ("NAME", field("name")), ("CREATED", field("created_at"))
]
KEY_COLUMNS: list[Column] = [
    ("ID", field("id")),
    ("NAME", field("name")),
    ("PREFIX", field("prefix")),
    ("MODELS", lambda k: k.get("models") or "all"),
    ("RPM", field("rpm")),
    ("TPM", field("tpm")),
    ("CONCURRENCY", field("max_concurrency")),
    ("STATUS", lambda k: "disabled" if k.get("disabled") else "active"),
    ("CREATED", field("created_at")),
]
GRANT_COLUMNS: list[Column] = [
    ("GRANT", field("id")),
    ("PACKAGE", field("package_id")),
    ("CREDITS", field("credits")),
    ("REMAINING", field("remaining")),
    ("VALID FROM", field("valid_from")),
    ("VALID UNTIL", field("valid_until")),
]
BALANCE_FIELDS = ("purchased", "available", "reserved", "spent", "expired")


def q(value: str) -> str:
    """A path segment."""
    return urllib.parse.quote(value, safe="")


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def model_list(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError("give model names separated by commas, e.g. a,b")
    return models


# accounts ------------------------------------------------------------------------------------


def accounts_create(api: AdminClient, args: argparse.Namespace) -> None:
    account = api.json("POST", "/admin/accounts", body={"name": args.name})
    as_json(account) if args.json else table([account], ACCOUNT_COLUMNS)


def accounts_list(api: AdminClient, args: argparse.Namespace) -> None:
    params = {"q": args.q, "limit": args.limit, "cursor": args.cursor}
    page = api.json("GET", "/admin/accounts", params=params)
    if args.json:
        return as_json(page)
    table(page["data"], ACCOUNT_COLUMNS)
    next_page(page.get("next_cursor"))


def accounts_show(api: AdminClient, args: argparse.Namespace) -> None:
    account = api.json("GET", f"/admin/accounts/{q(args.account_id)}", missing=f"account {args.account_id}")
    if args.json:
        return as_json(account)
    balance: dict[str, Any] = account.get("balance") or {}
    pairs(
        [("id", account.get("id")), ("name", account.get("name")), ("created", account.get("created_at"))]
        + [(name, int(balance[name])) for name in BALANCE_FIELDS if name in balance]
    )
    grants = account.get("grants") or []
    if grants:
        print()
        table(grants, GRANT_COLUMNS)


# keys ----------------------------------------------------------------------------------------


def keys_create(api: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name}
    for name in ("models", "rpm", "tpm", "max_concurrency"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    key = api.json("POST", f"/admin/accounts/{q(args.account_id)}/keys", body=body,
                   missing=f"account {args.account_id}")
    if args.json:
        return as_json(key)
    table([key], KEY_COLUMNS)
    print(f"\nsecret  {key['key']}\n(shown this once: tokengate keeps only its hash)")


def keys_list(api: AdminClient, args: argparse.Namespace) -> None:
    keys = api.json("GET", f"/admin/accounts/{q(args.account_id)}/keys", missing=f"account {args.account_id}")
    as_json(keys) if args.json else table(keys["data"], KEY_COLUMNS)


def keys_update(api: AdminClient, args: argparse.Namespace) -> None:
    changes: dict[str, Any] = {}
    if args.all_models:
        changes["models"] = None
    elif args.models is not None:
        changes["models"] = args.models
    for name in ("rpm", "tpm", "max_concurrency"):
        if getattr(args, "no_" + name):
            changes[name] = None
        elif getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.disabled is not None:
        changes["disabled"] = args.disabled
    if not changes:
        raise AdminError("nothing to change: give at least one option (see tokengate keys update --help)", 2)
    key = api.json("PATCH", f"/admin/keys/{q(args.key_id)}", body=changes, missing=f"key {args.key_id}")
    as_json(key) if args.json else table([key], KEY_COLUMNS)


def keys_revoke(api: AdminClient, args: argparse.Namespace) -> None:
    api.request("DELETE", f"/admin/keys/{q(args.key_id)}", missing=f"key {args.key_id}")
    if args.json:
        as_json({"id": args.key_id, "revoked": True})
    else:
        print(f"key {args.key_id} revoked: it stops working at once")


# parsers -------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    accounts = sub.add_parser("accounts", help="create, list and show accounts (admin API)",
                              description="Accounts, over the admin API.")
    cmds = accounts.add_subparsers(dest="action", required=True, metavar="{create,list,show}")
    p = cmds.add_parser("create", parents=[common], help="create an account")
    p.add_argument("name", metavar="NAME", help="the account's name")
    p.set_defaults(handler=accounts_create)
    p = cmds.add_parser("list", parents=[common], help="list accounts, newest first")
    p.add_argument("--q", default=None, metavar="TEXT", help="part of a name (any case), or an exact id")
    p.add_argument("--limit", type=positive, default=None, metavar="N",
                   help="accounts per page (1-500, default 50)")
    p.add_argument("--cursor", default=None, metavar="C", help="the next page, as the previous one printed")
    p.set_defaults(handler=accounts_list)
    p = cmds.add_parser("show", parents=[common], help="an account, its balance and grants")
    p.add_argument("account_id", metavar="ID")
    p.set_defaults(handler=accounts_show)

    keys = sub.add_parser("keys", help="create, list, update and revoke API keys (admin API)",
                          description="API keys, over the admin API.")
    cmds = keys.add_subparsers(dest="action", required=True, metavar="{create,list,update,revoke}")
    p = cmds.add_parser("create", parents=[common], help="a new key of an account (prints its secret once)")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p.add_argument("--name", required=True, help="the key's name")
    _limit_options(p)
    p.set_defaults(handler=keys_create)
    p = cmds.add_parser("list", parents=[common], help="an account's keys (never their secrets)")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p.set_defaults(handler=keys_list)
    p = cmds.add_parser("update", parents=[common], help="change a key's limits, disable or enable it")
    p.add_argument("key_id", metavar="KEY_ID")
    _limit_options(p, clearable=True)
    state = p.add_mutually_exclusive_group()
    state.add_argument("--disable", dest="disabled", action="store_const", const=True, default=None,
                       help="refuse its requests (401) until --enable")
    state.add_argument("--enable", dest="disabled", action="store_const", const=False,
                       help="accept its requests again")
    p.set_defaults(handler=keys_update)
    p = cmds.add_parser("revoke", parents=[common], help="revoke a key: it stops working at once")
    p.add_argument("key_id", metavar="KEY_ID")
    p.set_defaults(handler=keys_revoke)


def _limit_options(p: argparse.ArgumentParser, clearable: bool = False) -> None:
    models = p.add_mutually_exclusive_group() if clearable else p
    models.add_argument("--models", type=model_list, default=None, metavar="a,b",
                        help="only these public model names (default: all)")
    if clearable:
        models.add_argument("--all-models", action="store_true", help="allow every model")
    for name, what in (("rpm", "requests per minute"), ("tpm", "tokens per minute"),
                       ("max-concurrency", "requests at once")):
        group = p.add_mutually_exclusive_group() if clearable else p
        group.add_argument(f"--{name}", type=positive, default=None, metavar="N", help=f"at most N {what}")
        if clearable:
            group.add_argument(f"--no-{name}", action="store_true", help=f"no limit on {what}")
