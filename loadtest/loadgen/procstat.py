"""CPU time and memory of a server process and its descendants, read from /proc.

CPU is utime + stime of every live process of the tree plus cutime + cstime (children it
already reaped); memory is the sum of VmRSS (and the largest VmHWM) over the tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    cpu_seconds: float
    rss_bytes: int
    hwm_bytes: int  # the largest peak RSS of one process of the tree
    processes: int


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ")".
    return text[text.rindex(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(roots: Iterable[int]) -> list[int]:
    """The live processes among ``roots`` and all their descendants."""
    children = _children_map()
    seen: list[int] = []
    stack = [pid for pid in roots if (_PROC / str(pid)).exists()]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(children.get(pid, []))
    return seen


def _status_kb(pid: int, field: str) -> int:
    try:
        with (_PROC / str(pid) / "status").open() as status:
            for line in status:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def sample(roots: Iterable[int]) -> ProcSample:
    """CPU seconds and memory of the process trees rooted at ``roots`` right now."""
    pids = process_tree(roots)
    ticks, rss, hwm = 0, 0, 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # After comm: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
        rss += _status_kb(pid, "VmRSS:") * 1024
        hwm = max(hwm, _status_kb(pid, "VmHWM:") * 1024)
    return ProcSample(ticks / _TICKS, rss, hwm, len(pids))
