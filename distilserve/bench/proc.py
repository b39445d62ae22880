"""CPU time of a server and the processes it forked, read from ``/proc`` (Linux).

The bench reports the server's CPU-seconds per answered request beside its throughput: on a
small machine it says how much of the cores each answer takes, whichever client sent the load.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _cpu_ticks(pid: int) -> int:
    text = (PROC / str(pid) / "stat").read_text()
    # The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    fields = text.rpartition(")")[2].split()
    # utime and stime are the 14th and 15th fields of the whole line (11th and 12th after comm).
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in (PROC / str(pid) / "task").iterdir():
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def process_tree_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its living descendants (None: not on Linux, or
    ``pid`` is gone). A descendant that has exited is not counted."""
    if not (PROC / str(pid)).exists():
        return None
    ticks = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            ticks += _cpu_ticks(current)
            pending += _children(current)
        except (OSError, ValueError, IndexError):
            continue
    return ticks / os.sysconf("SC_CLK_TCK")
