"""Draw the benchmark's PNG. Runs in the plotting virtualenv (matplotlib), not the gateway's.

    <plot venv>/bin/python loadtest/bench/plot.py DATA.json OUT.png

DATA: {"title": str, "targets": [names], "panels": [{"title", "unit", "values": {target:
number | null}, "goal": number | null, "goal_label": str}]}. A panel whose values span more
than 20x gets a log scale; ``goal`` is drawn as a dashed line (tokengate's target). Imports
nothing of tokengate.
"""

from __future__ import annotations

import json
import sys
from typing import Any

COLORS = {"direct": "#8c8c8c", "tokengate": "#1f77b4", "vllm-router": "#ff7f0e",
          "litellm": "#d62728"}


def _tick(value: float, _pos: int) -> str:
    return f"{value:g}"


def draw(data: dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels: list[dict[str, Any]] = data["panels"]
    targets: list[str] = data["targets"]
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        names = [t for t in targets if panel["values"].get(t) is not None]
        values = [float(panel["values"][t]) for t in names]
        bars = ax.bar(names, values, color=[COLORS.get(t, "#2ca02c") for t in names])
        for bar, value in zip(bars, values, strict=True):
            label = f"{value:.2f}" if value < 10 else f"{value:.0f}"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        goal = panel.get("goal")
        if goal is not None:
            ax.axhline(goal, color="#2ca02c", linestyle="--", linewidth=1,
                       label=panel.get("goal_label", "target"))
            ax.legend(fontsize=7, loc="best", framealpha=0.7)
        shown = [*values, *([goal] if goal is not None else [])]
        if shown and min(shown) > 0 and max(shown) / min(shown) > 20:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_tick))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(panel["title"], fontsize=9)
        ax.set_ylabel(panel["unit"], fontsize=8)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(data["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: plot.py DATA.json OUT.png", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        draw(json.load(f), argv[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
