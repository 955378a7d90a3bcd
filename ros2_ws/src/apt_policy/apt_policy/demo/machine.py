"""What the machine took away from everything running on it: hypervisor steal time (Linux ``/proc/stat``).

On a virtual machine the hypervisor may stop a virtual CPU for tens to hundreds of milliseconds; every thread
on it stops, real-time priority or not, and nothing in the guest can prevent it. The demo reads the counter
around each episode so that a late look-ahead or a contract violation can be set against it.
"""

from __future__ import annotations

import os
from pathlib import Path

STAT = Path("/proc/stat")


def steal_seconds(stat: Path = STAT) -> float | None:
    """Hypervisor steal time of all CPUs together since boot (s), or None where the kernel does not say."""
    try:
        first = stat.read_text().splitlines()[0].split()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
    if len(first) < 9 or first[0] != "cpu":
        return None
    try:
        return int(first[8]) / float(ticks)
    except ValueError:
        return None
