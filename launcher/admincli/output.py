"""What the admin commands print: aligned tables by default, the API's JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

Column = tuple[str, Callable[[dict[str, Any]], Any]]


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    return " ".join(str(value).split())


def field(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row.get(name)


def table(rows: Iterable[dict[str, Any]], columns: Sequence[Column], out: TextIO | None = None) -> None:
    """Rows as an aligned table under a header of upper-case column names."""
    out = out or sys.stdout
    lines = [[title for title, _ in columns]]
    lines += [[cell(get(row)) for _, get in columns] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    for line in lines:
        rendered = "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True))
        print(rendered.rstrip(), file=out)


def pairs(items: Sequence[tuple[str, Any]], out: TextIO | None = None) -> None:
    """``label  value`` lines, the labels aligned."""
    out = out or sys.stdout
    width = max((len(label) for label, _ in items), default=0)
    for label, value in items:
        print(f"{label.ljust(width)}  {cell(value)}", file=out)


def as_json(value: Any, out: TextIO | None = None) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), file=out or sys.stdout)


def next_page(cursor: str | None, out: TextIO | None = None) -> None:
    if cursor:
        print(f"\nmore: repeat with --cursor {cursor}", file=out or sys.stdout)
