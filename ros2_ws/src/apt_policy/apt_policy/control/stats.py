"""Small rolling statistics for status messages: percentiles over a window, achieved rate."""

from __future__ import annotations

import math
from collections import deque

import numpy as np


class RollingStats:
    """The last ``window`` values; percentiles, mean and max over them (NaN when empty)."""

    def __init__(self, window: int = 500) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._values: deque[float] = deque(maxlen=int(window))

    def add(self, value: float) -> None:
        value = float(value)
        if math.isfinite(value):
            self._values.append(value)

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float:
        """``q`` in [0, 100], linear interpolation (numpy's default)."""
        if not self._values:
            return math.nan
        return float(np.percentile(np.fromiter(self._values, dtype=np.float64), q))

    @property
    def p50(self) -> float:
        return self.percentile(50.0)

    @property
    def p99(self) -> float:
        return self.percentile(99.0)

    @property
    def mean(self) -> float:
        return float(np.mean(self._values)) if self._values else math.nan

    @property
    def max(self) -> float:
        return float(max(self._values)) if self._values else math.nan


class RateMeter:
    """Achieved event rate (Hz) over the last ``window`` event times (s): (n - 1) / (last - first)."""

    def __init__(self, window: int = 200) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self._times: deque[float] = deque(maxlen=int(window))

    def add(self, t: float) -> None:
        self._times.append(float(t))

    def rate(self) -> float:
        """Events per second over the window; 0.0 with fewer than two events."""
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else math.inf
