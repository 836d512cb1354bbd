"""``tokengate orders`` and ``tokengate audit``: customers' orders, refunds, the audit log."""

from __future__ import annotations

import argparse

from launcher.admincli.accounts import positive, q
from launcher.admincli.client import AdminClient
from launcher.admincli.output import Column, as_json, field, next_page, table

ORDER_COLUMNS: list[Column] = [
    ("ORDER", field("id")),
    ("ACCOUNT", field("account_id")),
    ("PACKAGE", field("package_id")),
    ("AMOUNT", lambda o: f"{o['amount']} {o['currency']}"),
    ("STATUS", field("status")),
    ("PROVIDER", field("provider")),
    ("CREATED", field("created_at")),
    ("PAID", field("paid_at")),
]
AUDIT_COLUMNS: list[Column] = [
    ("AT", field("at")),
    ("ACTOR", field("actor")),
    ("ACTION", field("action")),
    ("TARGET", field("target")),
]
STATUSES = ("pending", "paid", "expired", "refunded")


def orders_list(api: AdminClient, args: argparse.Namespace) -> None:
    params = {"status": args.status, "account_id": args.account, "limit": args.limit, "cursor": args.cursor}
    page = api.json("GET", "/admin/orders", params=params)
    if args.json:
        return as_json(page)
    table(page["data"], ORDER_COLUMNS)
    next_page(page.get("next_cursor"))


def orders_refund(api: AdminClient, args: argparse.Namespace) -> None:
    order = api.json("POST", f"/admin/orders/{q(args.order_id)}/refund", body={"reason": args.reason},
                     missing=f"order {args.order_id}")
    as_json(order) if args.json else table([order], ORDER_COLUMNS)


def audit_show(api: AdminClient, args: argparse.Namespace) -> None:
    params = {"target": args.target, "action": args.action, "limit": args.limit, "cursor": args.cursor}
    page = api.json("GET", "/admin/audit", params=params)
    if args.json:
        return as_json(page)
    table(page["data"], AUDIT_COLUMNS)
    next_page(page.get("next_cursor"))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    orders = sub.add_parser("orders", help="customers' orders, refunds (admin API)",
                            description="Orders customers placed, over the admin API.")
    cmds = orders.add_subparsers(dest="action", required=True, metavar="{list,refund}")
    p = cmds.add_parser("list", parents=[common], help="orders, newest first")
    p.add_argument("--status", choices=STATUSES, default=None)
    p.add_argument("--account", default=None, metavar="ACCOUNT_ID", help="one account's orders only")
    _paging(p)
    p.set_defaults(handler=orders_list)
    p = cmds.add_parser("refund", parents=[common],
                        help="withdraw what is left of a paid order's credits and return its payment")
    p.add_argument("order_id", metavar="ORDER_ID")
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    p.set_defaults(handler=orders_refund)

    audit = sub.add_parser("audit", parents=[common], help="who changed what, when (admin API)",
                           description="The audit log: admin writes and orders' changes, newest first.")
    audit.add_argument("--target", default=None, metavar="T", help="e.g. order:ord_... or /admin/keys/KEY")
    audit.add_argument("--action", default=None, metavar="A", help="e.g. order.paid")
    _paging(audit)
    audit.set_defaults(handler=audit_show)


def _paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=positive, default=None, metavar="N", help="rows per page")
    p.add_argument("--cursor", default=None, metavar="C", help="the next page, as the previous one printed")
