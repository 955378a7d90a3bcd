"""The stall probe: its loop on a simulated clock, the attribution of stream gaps, and the real tool stopped
from outside (SIGSTOP stands in for a hypervisor taking the CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from apt_policy.bench.stall_probe import LatenessHistogram, load, probe, stalls_overlapping
from apt_policy.bench.stream import gaps_with_stall


class SimClock:
    """Sleeps advance the clock exactly; ``stall_at`` adds a stall to the sleep that crosses it."""

    def __init__(self, stall_at: float, stall: float) -> None:
        self.t = 0.0
        self.stall_at, self.stall = stall_at, stall

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        if self.t <= self.stall_at < self.t + dt:
            dt += self.stall
        self.t += dt


def test_probe_records_a_stall_and_continues_on_its_grid() -> None:
    clock = SimClock(stall_at=0.0505, stall=0.0123)
    lateness, stalls = probe(0.001, 0.002, lambda: clock.t >= 0.2, clock=clock, sleep=clock.sleep)
    assert len(stalls) == 1
    due, late = stalls[0]
    assert due == pytest.approx(0.051) and late == pytest.approx(0.0123)
    assert lateness.counts[0] == lateness.count - 1  # every other wake-up on time: no catch-up burst
    assert lateness.count == pytest.approx(
        200 - 12, abs=1
    )  # the 12 wake-ups the stall swallowed: not made up
    assert lateness.max == pytest.approx(0.0123) and lateness.quantile(0.5) <= lateness.BIN_S


def test_probe_below_threshold_is_not_a_stall() -> None:
    clock = SimClock(stall_at=0.0505, stall=0.0015)
    lateness, stalls = probe(0.001, 0.002, lambda: clock.t >= 0.1, clock=clock, sleep=clock.sleep)
    assert stalls == [] and lateness.max == pytest.approx(0.0015)


def test_histogram_quantiles() -> None:
    h = LatenessHistogram()
    assert h.quantile(0.99) == 0.0
    for i in range(1000):
        h.add(i * 1e-5 + 5e-6)  # one sample in each of the first 1000 bins: 0.005 ms .. 9.995 ms
    h.add(0.5)  # beyond the last bin: counted there, the maximum kept exactly
    assert h.count == 1001 and h.max == 0.5 and h.counts[-1] == 1
    assert h.quantile(0.5) == pytest.approx(0.00501, abs=1e-5)
    assert h.quantile(0.99) == pytest.approx(0.00991, abs=1e-5)
    assert h.quantile(1.0) == 0.5
    h.add(-1e-6)  # early (a coarse clock): the first bin
    assert h.counts[0] == 2


def test_overlap_and_gap_attribution() -> None:
    stalls = [(1.000, 0.010), (2.000, 0.003)]
    assert stalls_overlapping(stalls, 1.005, 1.006) == [(1.000, 0.010)]
    assert stalls_overlapping(stalls, 1.010, 1.5) == []  # touching the end is not an overlap
    t = np.arange(300) * 0.01 + 0.5  # 0.50 .. 3.49 s at 100 Hz
    # two gaps: 1.48 -> 1.51 s (no stall in it) and 1.99 -> 2.02 s (the stall at 2.000 s in its late part)
    t = np.delete(t, [99, 100, 150, 151])
    gaps, hit = gaps_with_stall(t, 0.01, stalls)
    assert (gaps, hit) == (2, 1)
    # a stall that ended before the late part (the previous arrival + 1 period) does not count
    assert gaps_with_stall(t, 0.01, [(1.985, 0.004)]) == (2, 0)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_tool_sees_its_processes_stopped(tmp_path: Path) -> None:
    out = tmp_path / "stalls.json"
    cmd = [sys.executable, "-m", "apt_policy.bench.stall_probe", "--out", str(out), "--priority", "0"]
    cmd += ["--threshold-ms", "20"]
    proc = subprocess.Popen(cmd)
    try:
        cpus = len(os.sched_getaffinity(0))
        deadline = time.monotonic() + 20
        while len(_children(proc.pid)) < cpus and time.monotonic() < deadline:
            time.sleep(0.05)
        children = _children(proc.pid)
        assert len(children) == cpus
        time.sleep(1.0)  # the probes are up and have installed their signal handlers
        for child in children:
            os.kill(child, signal.SIGSTOP)
        time.sleep(0.2)
        for child in children:
            os.kill(child, signal.SIGCONT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    records = load(out)
    assert sorted(r.cpu for r in records) == sorted(os.sched_getaffinity(0))
    for record in records:
        assert record.wakeups > 300 and record.scheduling == "normal"
        # the stop shows as one stall of about its length on every CPU (a loaded machine may add others)
        assert max(length for _, length in record.stalls) >= 0.15
    raw = json.loads(out.read_text())
    assert raw["threshold_ms"] == 20.0 and not list(tmp_path.glob("stalls.json.cpu*"))
