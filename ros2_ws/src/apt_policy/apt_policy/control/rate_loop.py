"""A fixed-rate loop on the monotonic clock (not an rclpy timer: those are not a real-time clock).

Tick ``k`` is due at ``start + k * period`` (absolute deadlines: no drift however long the callback takes).
A tick that starts more than one period after its deadline means whole periods were lost: those deadlines
are counted as missed and skipped (no burst of catch-up ticks), and the loop continues on the same grid.
Lateness of every tick (start - deadline, s) is recorded as jitter. The clock and sleep are injectable, so
tests run it on a simulated clock; :meth:`FixedRateLoop.stop` ends it promptly from any thread.

Two phases per tick (``lead``): the callback runs ``lead`` seconds before the tick's deadline and may return
a *send* function; the loop calls it at the deadline itself. Work that varies (computing and serialising a
command) then happens in the slack before the deadline, and what leaves at the deadline is only the send, so
the output's regularity is the wake-up precision, not the variation of the work. With ``lead = 0`` the send
function is called as soon as the callback returns. Every send's lateness (send - deadline) is recorded in
``send_lateness``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from apt_policy.control.stats import RateMeter, RollingStats


@dataclass(frozen=True)
class TickInfo:
    """index: deadline number k; deadline: when the tick's output is due (its send time), started: when the
    callback started (``lead`` before the deadline when on time), clock times (s); missed: deadlines skipped
    just before."""

    index: int
    deadline: float
    started: float
    missed: int


SendFn = Callable[[], None]


class FixedRateLoop:
    """Calls ``callback(TickInfo)`` every ``period`` seconds, ``lead`` s before each deadline, and the send
    function it returns (if any) at the deadline; see the module docstring.

    Exceptions from the callback or the send are counted (``errors``, ``last_error``), passed to ``on_error``
    if given, and do not stop the loop.
    """

    def __init__(
        self,
        period: float,
        callback: Callable[[TickInfo], SendFn | None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        window: int = 1000,
        name: str = "apt-control-loop",
        lead: float = 0.0,
    ) -> None:
        if not (period > 0 and period != float("inf")):
            raise ValueError(f"period must be a finite number of seconds > 0, got {period}")
        if not (0.0 <= lead < period):
            raise ValueError(f"lead must be >= 0 and shorter than the period ({period} s), got {lead}")
        self.period = float(period)
        self.lead = float(lead)
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
        self.jitter = RollingStats(window)  # lateness of each tick's start (deadline - lead), s
        self.send_lateness = RollingStats(window)  # send time - deadline, s
        self.rate = RateMeter(min(window, 200))

    def run(self, max_ticks: int | None = None) -> None:
        """Run in the calling thread until :meth:`stop` (or ``max_ticks`` ticks)."""
        start = self._clock() + self.lead  # the first deadline
        k = 0
        while not self._stop.is_set() and (max_ticks is None or self.ticks < max_ticks):
            deadline = start + k * self.period
            now = self._wait_until(deadline - self.lead)
            if self._stop.is_set():
                break
            late = now - (deadline - self.lead)
            missed = 0
            if late > self.period:
                missed = int(late // self.period)
                k += missed
                deadline = start + k * self.period
                late = now - (deadline - self.lead)
            self.missed_ticks += missed
            self.jitter.add(late)
            self.rate.add(now)
            self.ticks += 1
            send = self._guarded(
                self._callback, TickInfo(index=k, deadline=deadline, started=now, missed=missed)
            )
            if send is not None:
                sent_at = self._wait_until(deadline)
                if self._stop.is_set():
                    break
                self.send_lateness.add(sent_at - deadline)
                self._guarded(send)
            k += 1

    def _wait_until(self, t: float) -> float:
        """Sleep until clock time ``t`` (or a stop); returns the clock time on waking."""
        now = self._clock()
        while now < t and not self._stop.is_set():
            self._sleep(t - now)
            now = self._clock()
        return now

    def _guarded(self, fn: Callable[..., SendFn | None], *args: object) -> SendFn | None:
        try:
            return fn(*args)
        except Exception as exc:  # the loop must survive a bad tick; the owner sees the count
            self.errors += 1
            self.last_error = exc
            if self._on_error is not None:
                self._on_error(exc)
            return None

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
