"""A fixed-rate loop on the monotonic clock (not an rclpy timer: those are not a real-time clock).

Tick ``k`` is due at ``start + k * period`` (absolute deadlines: no drift however long the callback takes).
A tick that starts more than one period after its deadline means whole periods were lost: those deadlines
are counted as missed and skipped (no burst of catch-up ticks), and the loop continues on the same grid.
Lateness of every tick (start - deadline, s) is recorded as jitter. The clock and sleep are injectable, so
tests run it on a simulated clock; :meth:`FixedRateLoop.stop` ends it promptly from any thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from apt_policy.control.stats import RateMeter, RollingStats


@dataclass(frozen=True)
class TickInfo:
    """index: deadline number k; deadline, started: clock times (s); missed: deadlines skipped just before."""

    index: int
    deadline: float
    started: float
    missed: int


class FixedRateLoop:
    """Calls ``callback(TickInfo)`` every ``period`` seconds; see the module docstring.

    Exceptions from the callback are counted (``errors``, ``last_error``), passed to ``on_error`` if given,
    and do not stop the loop.
    """

    def __init__(
        self,
        period: float,
        callback: Callable[[TickInfo], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        window: int = 1000,
        name: str = "apt-control-loop",
    ) -> None:
        if not (period > 0 and period != float("inf")):
            raise ValueError(f"period must be a finite number of seconds > 0, got {period}")
        self.period = float(period)
        self._callback = callback
        self._clock = clock
        self._stop = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._on_error = on_error
        self._name = name
        self._thread: threading.Thread | None = None
        self.ticks = 0
        self.missed_ticks = 0
        self.errors = 0
        self.last_error: BaseException | None = None
        self.jitter = RollingStats(window)  # lateness of each tick, s
        self.rate = RateMeter(min(window, 200))

    def run(self, max_ticks: int | None = None) -> None:
        """Run in the calling thread until :meth:`stop` (or ``max_ticks`` ticks)."""
        start = self._clock()
        k = 0
        while not self._stop.is_set() and (max_ticks is None or self.ticks < max_ticks):
            deadline = start + k * self.period
            now = self._clock()
            while now < deadline and not self._stop.is_set():
                self._sleep(deadline - now)
                now = self._clock()
            if self._stop.is_set():
                break
            late = now - deadline
            missed = 0
            if late > self.period:
                missed = int(late // self.period)
                k += missed
                deadline = start + k * self.period
                late = now - deadline
            self.missed_ticks += missed
            self.jitter.add(late)
            self.rate.add(now)
            self.ticks += 1
            try:
                self._callback(TickInfo(index=k, deadline=deadline, started=now, missed=missed))
            except Exception as exc:  # the loop must survive a bad tick; the owner sees the count
                self.errors += 1
                self.last_error = exc
                if self._on_error is not None:
                    self._on_error(exc)
            k += 1

    def start(self) -> None:
        """Run in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("loop already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the loop to end and wait up to ``timeout`` s; True if it has ended."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
