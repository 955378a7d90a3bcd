"""When to command the gripper: turn a stream of gripper widths into sparse, rate-limited commands.

The control loop produces a gripper width (metres) on every tick. The Franka Hand must not receive a
new ``move``/``grasp`` goal on every tick (each goal pre-empts the previous one, and a grasp needs time
to close), so this module decides when a command is worth sending:

* ``binary`` mode: the width is compared with a threshold with hysteresis; a command is emitted only
  when the open/closed state changes (``close`` -> a grasp, ``open`` -> a move to ``open_width``).
* ``width`` mode: a ``move`` to the width is emitted when it differs from the last commanded width by
  at least ``min_width_delta``.

In both modes commands are at least ``min_interval`` seconds apart; a change that arrives while rate
limited is sent as soon as the interval has passed if it is still wanted. Non-finite widths are
ignored and counted. Pure logic: every time is passed in explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

GripperMode = Literal["binary", "width"]
CommandKind = Literal["open", "close", "move"]


@dataclass(frozen=True)
class GripperDecisionConfig:
    """Parameters of :class:`GripperDecider` (metres, seconds)."""

    mode: GripperMode = "binary"
    max_width: float = 0.08  # Franka Hand maximum opening
    open_width: float = 0.08  # width sent for "open" in binary mode
    closed_width: float = 0.0  # grasp target width for "close" in binary mode
    threshold: float = 0.04  # binary mode: widths below it mean "close"
    hysteresis: float = 0.01  # binary mode: total width of the dead band around the threshold
    min_width_delta: float = 0.005  # width mode: smallest change that is commanded
    min_interval: float = 0.5  # shortest time between two commands

    def __post_init__(self) -> None:
        if self.mode not in ("binary", "width"):
            raise ValueError(f"gripper mode must be 'binary' or 'width', got {self.mode!r}")
        values = {
            "max_width": self.max_width,
            "open_width": self.open_width,
            "closed_width": self.closed_width,
            "threshold": self.threshold,
            "hysteresis": self.hysteresis,
            "min_width_delta": self.min_width_delta,
            "min_interval": self.min_interval,
        }
        for name, value in values.items():
            if not math.isfinite(value) or value < 0.0:
                raise ValueError(f"gripper {name} must be finite and >= 0, got {value}")
        if self.max_width <= 0.0:
            raise ValueError(f"gripper max_width must be > 0, got {self.max_width}")
        if not self.closed_width < self.open_width <= self.max_width:
            raise ValueError(
                "gripper widths must satisfy closed_width < open_width <= max_width, got "
                f"{self.closed_width} / {self.open_width} / {self.max_width}"
            )
        low, high = self.threshold - self.hysteresis / 2.0, self.threshold + self.hysteresis / 2.0
        if self.mode == "binary" and not (low > 0.0 and high < self.max_width):
            raise ValueError(
                f"gripper threshold band [{low:.4f}, {high:.4f}] m must lie inside (0, {self.max_width}) m"
            )


@dataclass(frozen=True)
class GripperCommand:
    """One command for the gripper: ``close`` (grasp), ``open`` or ``move`` (to ``width``)."""

    kind: CommandKind
    width: float
    stamp: float


class GripperDecider:
    """Decides, tick by tick, whether a gripper command must be sent (see the module docstring)."""

    def __init__(self, config: GripperDecisionConfig | None = None) -> None:
        self.config = config or GripperDecisionConfig()
        self._binary_state: CommandKind | None = None  # open/close state the input currently asks for
        self._last_sent: GripperCommand | None = None
        self.commands_sent = 0
        self.rejected_inputs = 0
        self.suppressed_by_rate_limit = 0

    @property
    def last_sent(self) -> GripperCommand | None:
        """The last command returned by :meth:`update` (None before the first or after :meth:`invalidate`)."""
        return self._last_sent

    def update(self, width: float, now: float) -> GripperCommand | None:
        """Feed the commanded width at time ``now``; return a command to send, or None."""
        try:
            width = float(width)
        except (TypeError, ValueError):
            width = math.nan
        if not math.isfinite(width):
            self.rejected_inputs += 1
            return None
        cfg = self.config
        width = min(max(width, 0.0), cfg.max_width)
        wanted = self._wanted(width)
        if wanted is None:
            return None
        if self._last_sent is not None and now - self._last_sent.stamp < cfg.min_interval:
            self.suppressed_by_rate_limit += 1
            return None
        command = GripperCommand(kind=wanted[0], width=wanted[1], stamp=now)
        self._last_sent = command
        self.commands_sent += 1
        return command

    def invalidate(self) -> None:
        """Forget what was sent (e.g. the goal failed): the next update commands again, rate limit kept."""
        if self._last_sent is not None:
            # keep the stamp for the rate limit, drop the content
            self._last_sent = GripperCommand(kind="move", width=math.nan, stamp=self._last_sent.stamp)

    def _wanted(self, width: float) -> tuple[CommandKind, float] | None:
        """The command the input asks for if it differs from the last one sent, else None."""
        cfg = self.config
        last = self._last_sent
        if cfg.mode == "binary":
            low, high = cfg.threshold - cfg.hysteresis / 2.0, cfg.threshold + cfg.hysteresis / 2.0
            if width < low:
                self._binary_state = "close"
            elif width > high:
                self._binary_state = "open"
            elif self._binary_state is None:
                # first input inside the dead band: decide by the threshold itself
                self._binary_state = "close" if width < cfg.threshold else "open"
            kind: CommandKind = self._binary_state
            target = cfg.closed_width if kind == "close" else cfg.open_width
            if last is not None and last.kind == kind and last.width == target:
                return None
            return kind, target
        if last is not None and math.isfinite(last.width) and abs(width - last.width) < cfg.min_width_delta:
            return None
        return "move", width
