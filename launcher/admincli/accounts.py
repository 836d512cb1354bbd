"""``tokengate accounts`` and ``tokengate keys``."""

from __future__ import annotations

import argparse
import secrets
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
    ("CREDIT LIMIT", lambda k: credit_limit_text(k.get("credit_limit"))),
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
ADJUSTMENT_COLUMNS: list[Column] = [
    ("ID", field("id")),
    ("CREDITS", field("credits")),
    ("STATUS", field("status")),
    ("GRANT", field("grant_id")),
    ("TAKEN FROM", lambda a: [f"{p['grant_id']}:{p['credits']}" for p in a.get("allocation") or []]),
    ("KEY", field("idempotency_key")),
    ("REASON", field("reason")),
    ("CREATED", field("created_at")),
]


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


def credit_limit_text(cap: dict[str, Any] | None) -> str:
    """A key's credit cap in a table cell: ``5000/day``, ``100000 total``, ``none``."""
    if not cap:
        return "none"
    return f"{cap['credits']} total" if cap["period"] == "total" else f"{cap['credits']}/{cap['period']}"


def credit_limit_body(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--credit-limit N --period P`` as the API's ``credit_limit`` (None: not given)."""
    if args.credit_limit is None and args.period is None:
        return None
    if args.credit_limit is None or args.period is None:
        raise AdminError("--credit-limit and --period go together, e.g. --credit-limit 5000 --period day", 2)
    return {"credits": args.credit_limit, "period": args.period}


def signed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value == 0:
        raise argparse.ArgumentTypeError("give a non-zero number of credits (negative: a debit)")
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


def accounts_adjust(api: AdminClient, args: argparse.Namespace) -> None:
    """Credit or debit an account once per key (generated unless given: printed for a retry)."""
    key = args.key or "cli-" + secrets.token_hex(8)
    body = {"credits": args.credits, "reason": args.reason, "idempotency_key": key}
    adjustment = api.json("POST", f"/admin/accounts/{q(args.account_id)}/adjustments", body=body,
                          missing=f"account {args.account_id}")
    if args.json:
        return as_json(adjustment)
    table([adjustment], ADJUSTMENT_COLUMNS)
    if not args.key:
        print(f"\nidempotency key {key}: repeat with --key {key} to retry without applying it twice")


def accounts_adjustments(api: AdminClient, args: argparse.Namespace) -> None:
    params = {"limit": args.limit, "cursor": args.cursor}
    page = api.json("GET", f"/admin/accounts/{q(args.account_id)}/adjustments", params=params,
                    missing=f"account {args.account_id}")
    if args.json:
        return as_json(page)
    table(page["data"], ADJUSTMENT_COLUMNS)
    next_page(page.get("next_cursor"))


# keys ----------------------------------------------------------------------------------------


def keys_create(api: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name}
    for name in ("models", "rpm", "tpm", "max_concurrency"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if (cap := credit_limit_body(args)) is not None:
        body["credit_limit"] = cap
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
    if args.no_credit_limit:
        if args.credit_limit is not None or args.period is not None:
            raise AdminError("--no-credit-limit goes alone, without --credit-limit or --period", 2)
        changes["credit_limit"] = None
    elif (cap := credit_limit_body(args)) is not None:
        changes["credit_limit"] = cap
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
    cmds = accounts.add_subparsers(dest="action", required=True,
                                   metavar="{create,list,show,adjust,adjustments}")
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
    p = cmds.add_parser("adjust", parents=[common], help="credit (+N) or debit (-N) an account, once per key",
                        description="Credit or debit an account. A debit never takes the available "
                                    "balance below zero (refused, nothing changes).")
    p.add_argument("account_id", metavar="ACCOUNT")
    p.add_argument("--credits", type=signed, required=True, metavar="N",
                   help="credits to add; negative: to take back (e.g. --credits=-500)")
    p.add_argument("--reason", required=True, metavar="R", help="why (1-500 characters, audited)")
    p.add_argument("--key", default=None, metavar="K",
                   help="idempotency key: the same key again applies nothing more (default: generated)")
    p.set_defaults(handler=accounts_adjust)
    p = cmds.add_parser("adjustments", parents=[common], help="an account's adjustments, newest first")
    p.add_argument("account_id", metavar="ACCOUNT")
    p.add_argument("--limit", type=positive, default=None, metavar="N", help="per page (1-500, default 100)")
    p.add_argument("--cursor", default=None, metavar="C", help="the next page, as the previous one printed")
    p.set_defaults(handler=accounts_adjustments)

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
    p.add_argument("--credit-limit", type=positive, default=None, metavar="N",
                   help="at most N credits per --period (a cap on what this key may spend)")
    p.add_argument("--period", choices=("day", "month", "total"), default=None,
                   help="the credit limit's period: UTC calendar day or month, or in total")
    if clearable:
        p.add_argument("--no-credit-limit", action="store_true", help="no credit limit")
