"""The offset between two clocks, read so that a preemption between the reads cannot bias it.

The node plans on the monotonic clock and stamps trajectories on the ROS (system) clock:
``stamp = ros_now - (monotonic_now - t_plan)``. Read as two calls, a thread preempted (or waiting for the
GIL) between them shifts the stamp by as long as it waited, and a stamped trajectory by as much in time: at
0.5 rad/s, 10 ms is a 5 mrad jump where the arm's controller takes it over. :class:`ClockOffset` brackets
the other clock's read between two monotonic reads and keeps only a read whose bracket is short.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ClockOffset"]


class ClockOffset:
    """``other() - monotonic()``, each read bracketed by two monotonic reads.

    A read whose bracket exceeds ``max_bracket`` seconds is retried (up to ``tries`` times in all); if none
    is short enough, the last good offset is kept (the shortest bracket seen when there is none yet).
    ``interrupted`` counts the reads that had to be retried, ``stale`` those answered from the last good one.
    """

    def __init__(
        self,
        other: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
        max_bracket: float = 200e-6,
        tries: int = 4,
    ) -> None:
        if max_bracket <= 0 or tries < 1:
            raise ValueError("max_bracket must be > 0 and tries >= 1")
        self._other = other
        self._monotonic = monotonic
        self.max_bracket = float(max_bracket)
        self.tries = int(tries)
        self.interrupted = 0
        self.stale = 0
        self._good: float | None = None

    def read(self) -> float:
        """The current offset (s): add it to a monotonic time to get the other clock's time."""
        best: tuple[float, float] | None = None
        for attempt in range(self.tries):
            m1 = self._monotonic()
            other = self._other()
            m2 = self._monotonic()
            bracket = m2 - m1
            if best is None or bracket < best[0]:
                best = (bracket, other - 0.5 * (m1 + m2))
            if bracket <= self.max_bracket:
                if attempt:
                    self.interrupted += 1
                self._good = best[1]
                return self._good
        assert best is not None
        self.interrupted += 1
        if self._good is None:
            return best[1]
        self.stale += 1
        return self._good

    def to_other(self, t_monotonic: float) -> float:
        """``t_monotonic`` on the other clock."""
        return t_monotonic + self.read()
