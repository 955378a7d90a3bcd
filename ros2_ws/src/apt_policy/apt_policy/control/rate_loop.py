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

A tick that starts more than ``stall_after`` seconds late is a *stall*: ``on_stall`` gets a :class:`Stall`
saying where the time went -- the previous tick's callback and send (wall and, on the real clock, this
thread's CPU time), and (Linux, ``run_delay``) how long this thread was runnable but not running during the
gap, so a pause names its cause in the log: the CPU given to others (scheduler), the loop's own work, or the
thread blocked (the GIL, a lock, memory) -- also when it blocked inside its own callback.
"""

from __future__ import annotations

import os
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


@dataclass(frozen=True)
class Stall:
    """A tick that started ``late_s`` after its time (``missed`` deadlines skipped). ``callback_s`` /
    ``send_s``: how long the previous tick's callback and send took; ``callback_cpu_s`` / ``send_cpu_s``:
    the CPU time this thread spent in them (None: not measured, e.g. on a simulated clock); ``run_delay_s``:
    how long this thread waited for a CPU while runnable since the previous tick (None where the kernel
    does not say)."""

    at: float
    late_s: float
    missed: int
    callback_s: float
    send_s: float
    run_delay_s: float | None
    callback_cpu_s: float | None = None
    send_cpu_s: float | None = None

    def cause(self) -> str:
        """The likeliest reading of the figures (what dominated the gap)."""
        gap = max(self.late_s, 1e-9)
        if self.run_delay_s is not None and self.run_delay_s >= 0.5 * gap:
            return "the thread was runnable but not run: the CPU went to other threads (scheduler)"
        if max(self.callback_s, self.send_s) >= 0.5 * gap:
            in_callback = self.callback_s >= self.send_s
            part = "callback" if in_callback else "send (publish)"
            wall, cpu = (
                (self.callback_s, self.callback_cpu_s) if in_callback else (self.send_s, self.send_cpu_s)
            )
            if cpu is None or cpu >= 0.5 * wall:
                return f"the previous tick's own {part} was slow"
            return (
                f"the previous tick's {part} was blocked, not computing and not waiting for a CPU"
                f" ({cpu * 1e3:.1f} ms of CPU in {wall * 1e3:.1f} ms: the GIL, a lock, or memory)"
            )
        if self.run_delay_s is None:
            return "unknown (no scheduler figures on this platform)"
        return "the thread was blocked, not waiting for a CPU (the GIL, a lock, or memory)"

    def describe(self) -> str:
        delay = "n/a" if self.run_delay_s is None else f"{self.run_delay_s * 1e3:.1f} ms"
        return (
            f"tick started {self.late_s * 1e3:.1f} ms late ({self.missed} missed); previous callback "
            f"{self.callback_s * 1e3:.1f} ms, send {self.send_s * 1e3:.1f} ms, waiting for a CPU {delay}: "
            f"{self.cause()}"
        )


class RunDelay:
    """Cumulative time the calling thread spent runnable but not running (Linux ``schedstat``), read with
    one ``pread`` (~3 us); None where unavailable. Open it from the thread it measures."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def read(self) -> float | None:
        if self._fd is None:
            return None
        try:
            return int(os.pread(self._fd, 64, 0).split()[1]) * 1e-9
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
        on_stall: Callable[[Stall], None] | None = None,
        stall_after: float | None = None,
        cpu_clock: Callable[[], float] | None = None,
    ) -> None:
        """``cpu_clock``: this thread's CPU time, to tell a slow callback from a blocked one in a
        :class:`Stall`; default ``time.thread_time`` on the real clock, none on an injected one."""
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
        self._on_stall = on_stall
        self._cpu_clock = (
            cpu_clock if cpu_clock is not None else (time.thread_time if clock is time.monotonic else None)
        )
        self.stall_after = 5 * self.period if stall_after is None else float(stall_after)
        self.stalls = 0
        self.last_stall: Stall | None = None
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
        run_delay = RunDelay() if self._on_stall is not None else None
        waited = run_delay.read() if run_delay is not None else None
        cpu = self._cpu_clock if self._on_stall is not None else None
        callback_s = send_s = 0.0
        callback_cpu: float | None = None
        send_cpu: float | None = None
        while not self._stop.is_set() and (max_ticks is None or self.ticks < max_ticks):
            deadline = start + k * self.period
            now = self._wait_until(deadline - self.lead)
            if self._stop.is_set():
                break
            late = now - (deadline - self.lead)
            stall_late = late if late > self.stall_after else None
            missed = 0
            if late > self.period:
                missed = int(late // self.period)
                k += missed
                deadline = start + k * self.period
                late = now - (deadline - self.lead)
            self.missed_ticks += missed
            before, waited = waited, run_delay.read() if run_delay is not None else None
            if stall_late is not None:
                delay = None if before is None or waited is None else waited - before
                self._stalled(
                    Stall(now, stall_late, missed, callback_s, send_s, delay, callback_cpu, send_cpu)
                )
            self.jitter.add(late)
            self.rate.add(now)
            self.ticks += 1
            cpu_at = cpu() if cpu is not None else 0.0
            send = self._guarded(
                self._callback, TickInfo(index=k, deadline=deadline, started=now, missed=missed)
            )
            callback_s, send_s = self._clock() - now, 0.0
            callback_cpu = cpu() - cpu_at if cpu is not None else None
            send_cpu = 0.0 if cpu is not None else None
            if send is not None:
                sent_at = self._wait_until(deadline)
                if self._stop.is_set():
                    break
                self.send_lateness.add(sent_at - deadline)
                cpu_at = cpu() if cpu is not None else 0.0
                self._guarded(send)
                send_s = self._clock() - sent_at
                send_cpu = cpu() - cpu_at if cpu is not None else None
            k += 1
        if run_delay is not None:
            run_delay.close()

    def _stalled(self, stall: Stall) -> None:
        self.stalls += 1
        self.last_stall = stall
        if self._on_stall is not None:
            self._guarded(self._on_stall, stall)

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
