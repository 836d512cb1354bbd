"""``tokengate codes create | list``: redemption codes over the admin API.

``create`` prints the new codes this once (tokengate keeps only their hashes), as a table,
the API's JSON (``--json``) or its CSV (``--csv``, to standard output or ``--out FILE``) for
printing or mail merge. ``list`` shows codes' state, never a code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from launcher.admincli.accounts import positive
from launcher.admincli.client import AdminClient, AdminError
from launcher.admincli.output import Column, as_json, field, next_page, table

STATUSES = ("unused", "redeemed", "expired")
ISSUED_COLUMNS: list[Column] = [
    ("CODE", field("code")),
    ("PACKAGE", field("package_id")),
    ("EXPIRES", lambda c: c.get("expires_at") or "never"),
]
STATE_COLUMNS: list[Column] = [
    ("ID", field("id")),
    ("BATCH", field("batch_id")),
    ("PACKAGE", field("package_id")),
    ("STATUS", field("status")),
    ("EXPIRES", lambda c: c.get("expires_at") or "never"),
    ("REDEEMED", field("redeemed_at")),
    ("BY", field("redeemed_by")),
    ("GRANT", field("grant_id")),
    ("CREATED", field("created_at")),
]


def write_out(raw: bytes, out: str | None, what: str) -> None:
    """The API's CSV to standard output, or to ``out`` with a line on stderr saying so."""
    if out in (None, "-"):
        sys.stdout.flush()
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        return
    try:
        with open(out, "wb") as file:
            file.write(raw)
    except OSError as error:
        raise AdminError(f"cannot write {out}: {(error.strerror or str(error)).lower()}") from None
    rows = max(raw.count(b"\n") - 1, 0)  # after the header line
    print(f"wrote {rows} {what} to {out}", file=sys.stderr)


def codes_create(api: AdminClient, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"package_id": args.package, "count": args.count}
    if args.valid_days is not None:
        body["valid_days"] = args.valid_days
    missing = f"package {args.package}"
    if args.csv:
        _, raw = api.request("POST", "/admin/codes", body=body, params={"format": "csv"}, missing=missing)
        return write_out(raw, args.out, "codes")
    batch = api.json("POST", "/admin/codes", body=body, missing=missing)
    if args.json:
        return as_json(batch)
    table(batch["data"], ISSUED_COLUMNS)
    print(
        f"{len(batch['data'])} codes in batch {batch['batch_id']}: shown this once, "
        "tokengate keeps only their hashes",
        file=sys.stderr,
    )


def codes_list(api: AdminClient, args: argparse.Namespace) -> None:
    params: dict[str, Any] = {"package_id": args.package, "status": args.status, "batch_id": args.batch}
    if args.csv:
        _, raw = api.request("GET", "/admin/codes", params={**params, "format": "csv"})
        return write_out(raw, args.out, "codes")
    page = api.json("GET", "/admin/codes", params={**params, "limit": args.limit, "cursor": args.cursor})
    if args.json:
        return as_json(page)
    table(page["data"], STATE_COLUMNS)
    next_page(page.get("next_cursor"))


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    codes = sub.add_parser(
        "codes",
        help="mint and list redemption codes (admin API)",
        description="Redemption codes, over the admin API.",
    )
    cmds = codes.add_subparsers(dest="action", required=True, metavar="{create,list}")
    p = cmds.add_parser("create", parents=[common], help="a batch of new codes for a package (shown once)")
    p.add_argument("--package", required=True, metavar="PACKAGE_ID", help="the package a code grants")
    p.add_argument("--count", type=positive, required=True, metavar="N", help="how many codes (1-10000)")
    p.add_argument(
        "--valid-days",
        type=positive,
        default=None,
        metavar="D",
        help="days the codes may be redeemed (default: forever)",
    )
    _csv(p)
    p.set_defaults(handler=codes_create)
    p = cmds.add_parser("list", parents=[common], help="codes' state (never the codes themselves)")
    p.add_argument("--package", default=None, metavar="PACKAGE_ID", help="one package's codes only")
    p.add_argument("--status", choices=STATUSES, default=None, help="unused, redeemed or expired only")
    p.add_argument("--batch", default=None, metavar="BATCH_ID", help="one batch's codes only")
    p.add_argument(
        "--limit", type=positive, default=None, metavar="N", help="rows per page (1-1000, default 100)"
    )
    p.add_argument("--cursor", default=None, metavar="C", help="the next page, as the previous one printed")
    _csv(p)
    p.set_defaults(handler=codes_list)


def _csv(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", action="store_true", help="the API's CSV instead of a table (list: every match)")
    p.add_argument("--out", default=None, metavar="FILE", help="with --csv: write to FILE (default: stdout)")
