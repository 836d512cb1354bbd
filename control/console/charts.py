"""Bar charts as inline SVG, drawn on the server: no script, no library, no CDN.

Each chart is an ``<svg role="img" class="chart">`` with a ``<title>`` and a ``<desc>``
listing every bar's value, so a screen reader (and a test) reads what the picture shows;
every value is escaped. Heights are integers computed from integers.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from markupsafe import Markup

WIDTH, HEIGHT, AXIS, TOP = 640, 180, 36, 14
_ids = 0


def bar_chart(title: str, desc: str, labels: Sequence[str], values: Sequence[int]) -> Markup:
    """One bar per label; ``desc`` already tells the values in words."""
    global _ids
    _ids += 1
    uid = f"chart{_ids}"
    peak = max([*values, 1])
    n = max(len(values), 1)
    slot = (WIDTH - 8) // n
    bar = min(max(slot - max(slot // 5, 2), 1), 64)  # one model is a bar, not a wall
    plot = HEIGHT - AXIS - TOP
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'aria-labelledby="{uid}-t {uid}-d" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{uid}-t">{html.escape(title)}</title>',
        f'<desc id="{uid}-d">{html.escape(desc)}</desc>',
        f'<line x1="4" y1="{HEIGHT - AXIS}" x2="{WIDTH - 4}" y2="{HEIGHT - AXIS}" stroke="#d0d7de"/>',
    ]
    step = max(1, n // 12)  # at most about a dozen labels under the axis
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        height = value * plot // peak
        x = 4 + i * slot + (slot - bar) // 2
        y = HEIGHT - AXIS - height
        parts.append(
            f'<rect class="bar" x="{x}" y="{y}" width="{bar}" height="{height}">'
            f"<title>{html.escape(label)}: {value}</title></rect>"
        )
        if i % step == 0:
            parts.append(
                f'<text x="{x + bar // 2}" y="{HEIGHT - AXIS + 14}" text-anchor="middle">'
                f"{html.escape(label[-14:])}</text>"
            )
    parts.append(f'<text x="{WIDTH - 4}" y="{TOP - 2}" text-anchor="end">{peak}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # every value above is escaped
