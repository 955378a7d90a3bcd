"""Chunk execution at real latency: the strategy, the measured inference delay, the request threshold.

Real-time chunking (RTC) freezes the actions that will execute while the next chunk is computed (the
committed prefix) and asks the policy for a chunk whose first rows equal them; the new chunk then takes over
from its first non-committed action, so a switch changes no position (docs/CONTROL.md, "Real-time chunking").

**Delay in actions.** Action ``i`` of a chunk observed at ``t_obs`` is reached at ``t_obs + i*dt`` and the
target moves toward it during the step before. A chunk that arrives ``delta = t_arrival - t_obs`` after its
observation finds the target moving toward action ``ceil(delta/dt)``: actions ``0 .. ceil(delta/dt)`` are
consumed, so the measured delay is ``D = ceil(delta/dt) + 1`` actions (1 for a chunk that arrives at once).
With a committed prefix of ``d`` rows the new chunk takes over at ``t_obs + (d-1)*dt``, in time exactly when
``D <= d``. The estimate for the next request is a high running quantile of the measured ``D``
(:class:`DelayEstimator`).

**Request threshold.** The next chunk is requested when the executing chunk has ``max(floor, D_q + 1)``
actions left (``D_q`` the estimate, ``floor`` the configured threshold; at most ``horizon - 1``): the prefix
of ``D_q`` rows then lies inside the executing chunk with one action to spare, and the new chunk arrives
before the buffer runs out as long as the delay stays under its quantile.

**Anchored switches** (``max_prefix`` = K > 0, node parameter ``rtc_prefix_max``): only the first K committed
rows are sent. The new chunk starts where the arm will be (and, K > 1, how it moves) but is not asked to
continue the rest of the executing chunk; a delay above K then makes it arrive after its prefix, and it is
blended in from its arrival like a late chunk (counted as ``rtc_anchored``, not ``rtc_late``). With the
trained demo model at Orin latency this kept success near its no-latency figure where the full prefix lost it
(docs/CONTROL.md).

**Strategies** (the node's ``chunk_execution``): ``rtc`` sends the prefix (chunks that arrive later than the
prefix covers are cross-faded in); ``crossfade`` / ``ensemble`` / ``none`` blend as in :mod:`.blending`;
``auto`` is ``rtc`` when the model takes a prefix (``PolicyInfo.rtc_inputs``) and ``crossfade`` otherwise.
``rtc`` asked of a model without the inputs falls back to ``crossfade`` (with a note for the log).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("auto", "rtc", "crossfade", "ensemble", "none")
_EPS = 1e-9


@dataclass(frozen=True)
class ChunkingConfig:
    """rtc: send committed prefixes; delay_quantile / delay_window: the running estimate of the delay;
    trained_max_delay: the model's trained maximum delay in actions (0: training-free / unknown);
    max_prefix: send at most this many committed rows (0: as many as the delay estimate; see the module);
    overlap: actions the executing chunk must still have when the next one arrives (1: a plain switch; the
    cross-fade length when switches are blended, so the blend is not cut short by the old chunk's end)."""

    rtc: bool = False
    delay_quantile: float = 0.95
    delay_window: int = 50
    trained_max_delay: int = 0
    max_prefix: int = 0
    overlap: int = 1

    def __post_init__(self) -> None:
        if not (0.0 < self.delay_quantile <= 1.0):
            raise ValueError(f"delay_quantile must be in (0, 1], got {self.delay_quantile}")
        if int(self.delay_window) < 1 or int(self.trained_max_delay) < 0 or int(self.max_prefix) < 0:
            raise ValueError("delay_window must be >= 1, trained_max_delay and max_prefix >= 0")
        if int(self.overlap) < 1:
            raise ValueError(f"overlap must be >= 1 action, got {self.overlap}")


@dataclass(frozen=True)
class ExecutionPlan:
    """What the node does at chunk switches: ``strategy`` (rtc | crossfade | ensemble | none), the blend mode
    for the schedule (RTC: the fallback for late chunks), and a note when the request was changed."""

    strategy: str
    blend_mode: str
    rtc: bool
    note: str = ""


def resolve_strategy(requested: str, rtc_inputs: bool, fallback: str = "crossfade") -> ExecutionPlan:
    """The strategy for a model with (``rtc_inputs``) or without real-time-chunking inputs."""
    if requested not in STRATEGIES:
        raise ValueError(f"chunk execution must be one of {STRATEGIES}, got {requested!r}")
    if requested in ("auto", "rtc"):
        if rtc_inputs:
            return ExecutionPlan("rtc", fallback, True)
        note = "" if requested == "auto" else "the model takes no prefix (no RTC inputs): using crossfade"
        return ExecutionPlan(fallback, fallback, False, note)
    return ExecutionPlan(requested, requested, False)


def delay_in_actions(t_obs: float, t_arrival: float, dt: float) -> int:
    """Actions consumed between the observation and the chunk's arrival: ``ceil(delta/dt) + 1``."""
    delta = max(0.0, float(t_arrival) - float(t_obs))
    return math.ceil(delta / dt - _EPS) + 1


class DelayEstimator:
    """Measured delays (actions) of recent chunks and the high running quantile used for the next request.

    Not thread-safe on its own (the controller calls it under its lock).
    """

    def __init__(self, dt: float, config: ChunkingConfig | None = None) -> None:
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be > 0, got {dt}")
        self.dt = float(dt)
        self.config = config or ChunkingConfig()
        self._window: deque[int] = deque(maxlen=int(self.config.delay_window))
        self.measured = 0
        self.last = 0
        self.max_seen = 0
        self.over_trained_max = 0  # chunks whose delay exceeded the model's trained maximum
        self.late = 0  # RTC chunks that arrived after their committed prefix ended
        self.anchored = 0  # of those, sent with a prefix capped at max_prefix: blended in by design
        self.on_time = 0  # RTC chunks that took over from their first non-committed action

    def add(self, t_obs: float, t_arrival: float) -> int:
        """Record a chunk's delay; returns it in actions."""
        d = delay_in_actions(t_obs, t_arrival, self.dt)
        self._window.append(d)
        self.measured += 1
        self.last = d
        self.max_seen = max(self.max_seen, d)
        if self.config.trained_max_delay > 0 and d > self.config.trained_max_delay:
            self.over_trained_max += 1
        return d

    def count_late(self, prefix_len: int) -> None:
        """A chunk arrived after its committed prefix: ``anchored`` when that prefix was capped at
        ``max_prefix`` (blended in by design), ``late`` otherwise (the delay outran the estimate)."""
        cap = int(self.config.max_prefix)
        if cap > 0 and prefix_len >= cap:
            self.anchored += 1
        else:
            self.late += 1

    def reset(self) -> None:
        """Forget the window (keep the counters), e.g. after a long pause."""
        self._window.clear()

    def recent(self) -> tuple[int, ...]:
        """The measured delays (actions) in the window, oldest first."""
        return tuple(self._window)

    def prime(self, delays: tuple[int, ...] | list[int]) -> None:
        """Start the window from delays measured before (e.g. the previous episode of a node that keeps
        running); the counters are not touched."""
        for d in delays:
            if int(d) < 1:
                raise ValueError(f"a delay is at least 1 action, got {d}")
            self._window.append(int(d))

    @property
    def estimate(self) -> int:
        """High running quantile of the measured delay (actions), 0 before the first measurement."""
        if not self._window:
            return 0
        window = np.fromiter(self._window, float)
        return math.ceil(float(np.quantile(window, self.config.delay_quantile)))

    def prefix_length(self, horizon: int) -> int:
        """Rows to commit in the next request: the estimate, leaving at least one free action, at most
        ``max_prefix`` (when set)."""
        rows = max(0, min(self.estimate, int(horizon) - 1))
        cap = int(self.config.max_prefix)
        return min(rows, cap) if cap > 0 else rows

    def request_threshold(self, floor: int, horizon: int | None) -> int:
        """Request at ``max(floor, estimate + overlap)`` actions left, at most ``horizon - 1`` (see the
        module)."""
        threshold = max(int(floor), self.estimate + int(self.config.overlap))
        if horizon is not None:
            threshold = min(threshold, max(int(horizon) - 1, 0))
        return threshold

    def exceeds_trained_max(self) -> bool:
        """The last measured delay is above the model's trained maximum (RTC trained models only)."""
        return self.config.trained_max_delay > 0 and self.last > self.config.trained_max_delay

    def snapshot(self) -> dict[str, int]:
        return {
            "delay_last_actions": self.last,
            "delay_estimate_actions": self.estimate,
            "delay_max_actions": self.max_seen,
            "delay_measured": self.measured,
            "delay_over_trained_max": self.over_trained_max,
            "rtc_on_time": self.on_time,
            "rtc_late": self.late,
            "rtc_anchored": self.anchored,
            "rtc_trained_max_delay": int(self.config.trained_max_delay),
        }
