"""Real-time scheduling helpers, exercised in a child interpreter (the test process itself stays normal)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from apt_policy.control.realtime import set_fifo

CHILD = textwrap.dedent(
    """
    import json, threading
    from apt_policy.control.realtime import make_realtime, scheduler_of, set_fifo

    out = {}
    try:
        set_fifo(7)
    except PermissionError as exc:
        print(json.dumps({"denied": str(exc)}))
        raise SystemExit(0)
    out["main"] = scheduler_of()
    release = threading.Event()
    seen = {}

    def worker():
        seen["before"] = scheduler_of()  # inherited from the thread that created it
        release.wait()
        seen["after"] = scheduler_of()

    t = threading.Thread(target=worker)
    t.start()
    out["count"], lock_error = make_realtime(9, others=3)  # this thread 9, every other one 3
    out["lock_error"] = None if lock_error is None else str(lock_error)
    release.set()
    t.join()
    out.update(seen, main_after=scheduler_of())
    print(json.dumps(out))
    """
)


def test_fifo_is_set_per_thread_inherited_and_for_the_whole_process() -> None:
    """make_realtime: every other thread gets ``others``, the caller its own priority (set last)."""
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if "denied" in out:
        pytest.skip(f"SCHED_FIFO not permitted here: {out['denied']}")
    assert out["main"] == ["SCHED_FIFO", 7]
    assert out["before"] == ["SCHED_FIFO", 7]  # a thread created by a FIFO thread starts FIFO
    assert out["count"] >= 2 and out["after"] == ["SCHED_FIFO", 3] and out["main_after"] == ["SCHED_FIFO", 9]


@pytest.mark.parametrize("priority", [0, 100, -1])
def test_priorities_outside_1_99_are_refused(priority: int) -> None:
    with pytest.raises(ValueError, match=r"\[1, 99\]"):
        set_fifo(priority)
