"""Real-time scheduling (Linux SCHED_FIFO) for the threads whose timing matters: the command stream, and the
simulated robot standing in for a real-time controller. Needs CAP_SYS_NICE or an rtprio limit
(``ulimit -r``, limits.conf); every function raises OSError when it is not allowed.
"""

from __future__ import annotations

import os

MIN_PRIORITY, MAX_PRIORITY = 1, 99
# The cell as this project runs it (sim.yaml, make demo, bench, soak, fault matrix): the node's stream
# thread at STREAM_PRIORITY and the arm controller above it at CONTROLLER_PRIORITY, as ros2_control's
# controller_manager runs SCHED_FIFO on a PREEMPT_RT robot PC above its clients (docs/DEPLOY.md);
# fake_franka stands in for it.
STREAM_PRIORITY, CONTROLLER_PRIORITY = 50, 60
# A thread waiting for the GIL asks its holder to drop it after this long (Python's default: 5 ms). The
# node's stream thread and fake_franka's command reception need it on time.
GIL_SWITCH_INTERVAL_S = 0.0001


def set_fifo(priority: int, tid: int = 0) -> None:
    """SCHED_FIFO at ``priority`` for thread ``tid`` (0: the calling thread)."""
    if not MIN_PRIORITY <= int(priority) <= MAX_PRIORITY:
        raise ValueError(f"SCHED_FIFO priority must be in [{MIN_PRIORITY}, {MAX_PRIORITY}], got {priority}")
    if not hasattr(os, "sched_setscheduler"):
        raise OSError("SCHED_FIFO is not available on this platform")
    os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(int(priority)))


def process_thread_ids() -> list[int]:
    """Kernel thread ids of this process (Linux /proc)."""
    try:
        return sorted(int(t) for t in os.listdir("/proc/self/task"))
    except OSError as exc:
        raise OSError(f"cannot list this process's threads: {exc}") from exc


def set_fifo_all_threads(priority: int) -> int:
    """SCHED_FIFO at ``priority`` for every thread of this process (threads created later by them inherit
    it); returns how many were set. Threads that ended meanwhile are skipped."""
    count = 0
    for tid in process_thread_ids():
        try:
            set_fifo(priority, tid)
        except ProcessLookupError:
            continue
        count += 1
    return count


def scheduler_of(tid: int = 0) -> tuple[str, int]:
    """(policy name, priority) of thread ``tid`` (0: the calling thread)."""
    policy = os.sched_getscheduler(int(tid))
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR"}
    return names.get(policy, str(policy)), os.sched_getparam(int(tid)).sched_priority


def lock_memory() -> None:
    """mlockall(MCL_CURRENT | MCL_FUTURE): no page of this process is ever paged out or faulted in from
    disk (the usual real-time practice; memory compaction and reclaim then cannot stall it). Needs
    CAP_IPC_LOCK or an RLIMIT_MEMLOCK above the process's size; OSError otherwise."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    mcl_current, mcl_future = 1, 2  # <sys/mman.h> on Linux
    if libc.mlockall(mcl_current | mcl_future) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mlockall failed: {os.strerror(errno)}")


def make_realtime(
    priority: int, thread_id: int = 0, others: int = 0, lock: bool = True
) -> tuple[int, OSError | None]:
    """SCHED_FIFO ``priority`` for thread ``thread_id`` (0: the calling thread); with ``others`` > 0, every
    other thread of the process gets ``others`` first. Then, with ``lock``, the memory is locked
    (:func:`lock_memory`: it faults in every mapped page, ~0.5-1 s for a 1.6 GB node, so a loop must not do
    it in one of its ticks; lock earlier and pass ``lock=False``).

    Returns (threads set, the memory-lock error or None). Raises OSError / ValueError when the scheduling
    is not permitted (nothing is locked then).
    """
    count = set_fifo_all_threads(others) if others > 0 else 0
    set_fifo(priority, thread_id)
    if not lock:
        return max(count, 1), None
    try:
        lock_memory()
    except OSError as exc:
        return max(count, 1), exc
    return max(count, 1), None
