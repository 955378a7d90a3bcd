"""Processes as Linux's /proc shows them: children (of every thread), a process tree, a reaped-or-zombie test.

Shared by the whole-system tools (rig, soak, faults) and the process tests. A child started by any thread of
a process (the node's inference process is restarted from its worker thread) is listed under that thread's
``/proc/<pid>/task/<tid>/children``, so every thread is read.
"""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them (sorted)."""
    found: list[int] = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(x) for x in path.read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(found)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def gone(pid: int) -> bool:
    """The process has exited (no longer listed, or a zombie waiting to be reaped)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ")[-1][:1] == "Z"
    except OSError:
        return True
