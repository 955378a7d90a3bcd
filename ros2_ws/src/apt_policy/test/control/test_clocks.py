"""ClockOffset: a preemption between the two clock reads does not shift the offset."""

from __future__ import annotations

import time

import pytest
from apt_policy.control.clocks import ClockOffset

OFFSET = 1.7e9  # the other clock (e.g. the ROS/system clock) minus the monotonic clock


class _Clocks:
    """A monotonic clock and another clock OFFSET ahead; ``pauses`` are preemptions (s) that happen right
    after a monotonic read, before the other clock is read (one per read, in order; 0: none)."""

    def __init__(self, pauses: list[float]) -> None:
        self.t = 100.0
        self.pauses = list(pauses)
        self.other_reads = 0

    def monotonic(self) -> float:
        self.t += 20e-6  # a read costs a little
        value = self.t
        if self.pauses:
            self.t += self.pauses.pop(0)
        return value

    def other(self) -> float:
        self.other_reads += 1
        self.t += 20e-6
        return self.t + OFFSET


def test_a_preempted_read_is_retried_not_taken() -> None:
    # the naive conversion, other() - monotonic() with a 10 ms preemption in between, is 10 ms off
    clocks = _Clocks([0.010])
    m = clocks.monotonic()
    assert clocks.other() - m - OFFSET == pytest.approx(0.010, abs=1e-4)

    clocks = _Clocks([0.010, 0.0, 0.0, 0.0])
    offset = ClockOffset(clocks.other, clocks.monotonic)
    assert offset.read() == pytest.approx(OFFSET, abs=50e-6)
    assert offset.interrupted == 1 and offset.stale == 0 and clocks.other_reads == 2


def test_every_read_preempted_keeps_the_last_good_offset() -> None:
    clocks = _Clocks([0.0, 0.0])
    offset = ClockOffset(clocks.other, clocks.monotonic, tries=3)
    good = offset.read()
    assert good == pytest.approx(OFFSET, abs=50e-6)
    clocks.pauses = [0.008, 0.0, 0.012, 0.0, 0.005, 0.0]  # three tries, each preempted
    assert offset.read() == good
    assert offset.stale == 1 and offset.interrupted == 1
    t = 5.0
    assert offset.to_other(t) == pytest.approx(t + OFFSET, abs=50e-6)


def test_without_a_good_read_yet_the_shortest_bracket_is_used() -> None:
    clocks = _Clocks([0.008, 0.0, 0.003, 0.0])
    offset = ClockOffset(clocks.other, clocks.monotonic, tries=2)
    assert offset.read() == pytest.approx(OFFSET + 0.0015, abs=1e-4)  # half the shortest bracket


def test_real_clocks_agree_with_the_system_clock() -> None:
    offset = ClockOffset(time.time)
    assert abs(offset.to_other(time.monotonic()) - time.time()) < 0.005
    with pytest.raises(ValueError):
        ClockOffset(time.time, tries=0)
