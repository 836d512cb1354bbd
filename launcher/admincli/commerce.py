"""``tokengate packages``, ``tokengate purchases`` and ``tokengate usage``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from launcher.admincli.accounts import model_list, positive, q
from launcher.admincli.client import AdminClient, AdminError
from launcher.admincli.output import Column, as_json, field, next_page, table

PACKAGE_COLUMNS: list[Column] = [
    ("ID", field("id")),
    ("NAME", field("name")),
    ("CREDITS", field("credits")),
    ("VALID DAYS", field("valid_days")),
    ("MODELS", lambda p: p.get("models") or "all"),
    ("PRICE", lambda p: f"{p['price']['amount']} {p['price']['currency']}" if p.get("price") else "-"),
    ("ON SALE", lambda p: "trial" if p.get("trial") else "yes" if p.get("for_sale") else "no"),
    ("CREATED", field("created_at")),
]
GRANT_COLUMNS: list[Column] = [
    ("GRANT", field("id")),
    ("ACCOUNT", field("account_id")),
    ("PACKAGE", field("package_id")),
    ("ORDER", field("order_id")),
    ("CREDITS", field("credits")),
    ("REMAINING", field("remaining")),
    ("VALID UNTIL", field("valid_until")),
]
RECORD_COLUMNS: list[Column] = [
    ("FINISHED", field("finished_at")),
    ("REQUEST", field("request_id")),
    ("KEY", field("key_id")),
    ("MODEL", field("model")),
    ("PROMPT", field("prompt_tokens")),
    ("COMPLETION", field("completion_tokens")),
    ("CHARGE", field("charge")),
    ("STATUS", field("status")),
]
SUM_COLUMNS: list[Column] = [
    ("REQUESTS", field("requests")),
    ("PROMPT", field("prompt_tokens")),
    ("COMPLETION", field("completion_tokens")),
    ("CHARGE", field("charge")),
]
GROUPS = ("day", "model", "key")


def packages_create(api: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "credits": args.credits, "valid_days": args.valid_days}
    if args.models is not None:
        body["models"] = args.models
    if args.id is not None:
        body["id"] = args.id
    if args.price is not None:
        body["price"] = {"amount": args.price, "currency": args.currency}
    body["for_sale"], body["trial"] = args.for_sale, args.trial
    package = api.json("POST", "/admin/packages", body=body)
    as_json(package) if args.json else table([package], PACKAGE_COLUMNS)


def packages_list(api: AdminClient, args: argparse.Namespace) -> None:
    packages = api.json("GET", "/admin/packages")
    as_json(packages) if args.json else table(packages["data"], PACKAGE_COLUMNS)


def purchases_create(api: AdminClient, args: argparse.Namespace) -> None:
    body = {"package_id": args.package, "order_id": args.order}
    grant = api.json("POST", f"/admin/accounts/{q(args.account_id)}/purchases", body=body)
    as_json(grant) if args.json else table([grant], GRANT_COLUMNS)


def group_list(text: str) -> list[str]:
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if not groups or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: group by any of day, model, key (e.g. day,model)")
    return list(dict.fromkeys(groups))


def usage_show(api: AdminClient, args: argparse.Namespace) -> None:
    params = {
        "from": args.start,
        "to": args.end,
        "group_by": ",".join(args.group_by) if args.group_by else None,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    page = api.json("GET", f"/admin/accounts/{q(args.account_id)}/usage", params=params,
                    missing=f"account {args.account_id}")
    if args.json:
        return as_json(page)
    if args.group_by:
        columns: list[Column] = [(g.upper(), field(g)) for g in args.group_by] + SUM_COLUMNS
        table(page["data"], columns)
    else:
        table(page["data"], RECORD_COLUMNS)
    next_page(page.get("next_cursor"))


def usage_export(api: AdminClient, args: argparse.Namespace) -> None:
    params = {"format": "csv", "account_id": args.account, "from": args.start, "to": args.end}
    _, raw = api.request("GET", "/admin/usage/export", params=params)
    if args.out in (None, "-"):
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    try:
        with open(args.out, "wb") as out:
            out.write(raw)
    except OSError as error:
        raise AdminError(f"cannot write {args.out}: {(error.strerror or str(error)).lower()}") from None
    records = max(raw.count(b"\n") - 1, 0)  # after the header line
    print(f"wrote {records} usage records to {args.out}", file=sys.stderr)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    packages = sub.add_parser("packages", help="create and list credit packages (admin API)",
                              description="Credit packages, over the admin API.")
    cmds = packages.add_subparsers(dest="action", required=True, metavar="{create,list}")
    p = cmds.add_parser("create", parents=[common], help="a new package (or the same one again)")
    p.add_argument("--name", required=True)
    p.add_argument("--credits", type=positive, required=True, metavar="N", help="credits it grants")
    p.add_argument("--valid-days", type=positive, required=True, metavar="N", help="days a grant lasts")
    p.add_argument("--models", type=model_list, default=None, metavar="a,b",
                   help="its credits pay for these models only (default: all)")
    p.add_argument("--id", default=None, help="the package's id (default: generated)")
    p.add_argument("--price", type=int, default=None, metavar="AMOUNT",
                   help="what a customer pays, in minor units of --currency (e.g. 4900 for 49.00)")
    p.add_argument("--currency", default="CNY", help="ISO 4217 code of --price (default CNY)")
    p.add_argument("--for-sale", action="store_true", help="list it in the public price list (needs --price)")
    p.add_argument("--trial", action="store_true", help="the package each new sign-up gets once")
    p.set_defaults(handler=packages_create)
    p = cmds.add_parser("list", parents=[common], help="every package")
    p.set_defaults(handler=packages_list)

    purchases = sub.add_parser("purchases", help="grant a package to an account (admin API)",
                               description="Purchases, over the admin API.")
    cmds = purchases.add_subparsers(dest="action", required=True, metavar="{create}")
    p = cmds.add_parser("create", parents=[common],
                        help="grant a package; the same order again grants nothing more")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    p.add_argument("--package", required=True, metavar="PACKAGE_ID")
    p.add_argument("--order", required=True, metavar="ORDER_ID", help="your order id (idempotency)")
    p.set_defaults(handler=purchases_create)

    usage = sub.add_parser("usage", help="an account's usage, the CSV export (admin API)",
                           description="Usage records, over the admin API.")
    cmds = usage.add_subparsers(dest="action", required=True, metavar="{show,export}")
    p = cmds.add_parser("show", parents=[common], help="an account's usage records or totals")
    p.add_argument("account_id", metavar="ACCOUNT_ID")
    _window(p)
    p.add_argument("--group-by", type=group_list, default=None, metavar="day,model,key",
                   help="totals by any of day, model, key")
    p.add_argument("--limit", type=positive, default=None, metavar="N",
                   help="rows per page (1-1000, default 100)")
    p.add_argument("--cursor", default=None, metavar="C", help="the next page, as the previous one printed")
    p.set_defaults(handler=usage_show)
    p = cmds.add_parser("export", parents=[common], help="every usage record as CSV")
    p.add_argument("--out", default=None, metavar="FILE", help="write to FILE (default: standard output)")
    p.add_argument("--account", default=None, metavar="ACCOUNT_ID", help="one account's records only")
    _window(p)
    p.set_defaults(handler=usage_export)


def _window(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="start", default=None, metavar="ISO", help="from this date or time (UTC)")
    p.add_argument("--to", dest="end", default=None, metavar="ISO", help="up to this date or time, excluded")
