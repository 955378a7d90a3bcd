"""What a chunk's numbers mean: arm and gripper action semantics, as declared in the bundle config.

Arm (first ``dof`` columns of an action):

* ``absolute`` -- joint position targets (rad).
* ``delta``    -- offsets from the measured joint state at the chunk's observation time:
                  target = q_obs + arm_scale * a (rad).
* ``velocity`` -- joint velocities: v = arm_scale * a (rad/s); the controller integrates them at its own
                  control dt from the previous command (never from the measured state).

Gripper (column ``gripper_index``, by default the one after the arm):

* ``absolute`` -- width in metres, clipped to ``[0, max_width]``.
* ``binary``   -- value >= threshold means ``open`` (or ``closed`` with ``binary_high_is_open=False``),
                  mapped to ``open_width`` / ``closed_width``.
* ``none``     -- the policy does not drive the gripper.

Blending happens on resolved values (positions for absolute/delta, velocities for velocity; the raw gripper
value), so two delta chunks computed from different observations are blended as absolute targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ARM_MODES = ("absolute", "delta", "velocity")
GRIPPER_MODES = ("absolute", "binary", "none")


@dataclass(frozen=True)
class ActionLayout:
    """How to read one action vector: semantics plus where the arm and gripper values are.

    dof               number of arm joints (the first ``dof`` columns)
    arm               "absolute" | "delta" | "velocity"
    arm_scale         multiplies delta (rad per unit) and velocity (rad/s per unit) actions; default 1
    gripper           "absolute" | "binary" | "none"
    gripper_index     column of the gripper value; None -> ``dof`` when the gripper is used
    gripper_threshold binary: decision threshold on the raw value                       default 0.5
    binary_high_is_open binary: True -> raw >= threshold means open                    default True
    open_width / closed_width / max_width   metres                                      0.08 / 0.0 / 0.08
    """

    dof: int = 7
    arm: str = "absolute"
    arm_scale: float = 1.0
    gripper: str = "none"
    gripper_index: int | None = None
    gripper_threshold: float = 0.5
    binary_high_is_open: bool = True
    open_width: float = 0.08
    closed_width: float = 0.0
    max_width: float = 0.08

    def __post_init__(self) -> None:
        if self.arm not in ARM_MODES:
            raise ValueError(f"arm action semantics must be one of {ARM_MODES}, got {self.arm!r}")
        if self.gripper not in GRIPPER_MODES:
            raise ValueError(f"gripper action semantics must be one of {GRIPPER_MODES}, got {self.gripper!r}")
        if self.dof <= 0:
            raise ValueError(f"dof must be > 0, got {self.dof}")
        if not (math.isfinite(self.arm_scale) and self.arm_scale > 0):
            raise ValueError(f"arm_scale must be finite and > 0, got {self.arm_scale}")
        if not (0 <= self.closed_width < self.open_width <= self.max_width):
            raise ValueError("gripper widths must satisfy 0 <= closed_width < open_width <= max_width")
        if self.gripper != "none" and self.gripper_column < self.dof:
            raise ValueError(
                f"gripper_index {self.gripper_column} overlaps the arm columns 0..{self.dof - 1}"
            )

    @property
    def gripper_column(self) -> int:
        return self.dof if self.gripper_index is None else int(self.gripper_index)

    @property
    def min_action_dim(self) -> int:
        return self.dof if self.gripper == "none" else self.gripper_column + 1

    @classmethod
    def from_config(cls, semantics: Any, dof: int, **overrides: Any) -> ActionLayout:
        """From ``core.config.ActionSemantics`` (or a mapping with arm/arm_scale/gripper), plus overrides."""
        get = semantics.get if isinstance(semantics, dict) else lambda k, d=None: getattr(semantics, k, d)
        values = {
            "dof": dof,
            "arm": get("arm", "absolute"),
            "arm_scale": float(get("arm_scale", 1.0)),
            "gripper": get("gripper", "none"),
        }
        values.update(overrides)
        return cls(**values)

    # ------------------------------------------------------------------------------------------ resolve

    def check(self, actions: np.ndarray, state: np.ndarray | None) -> str | None:
        """Why a raw chunk cannot be resolved (None when it can)."""
        if actions.ndim != 2 or actions.shape[0] == 0:
            return f"actions must be (horizon, action_dim) with horizon > 0, got shape {actions.shape}"
        if actions.shape[1] < self.min_action_dim:
            return f"actions have {actions.shape[1]} columns, need at least {self.min_action_dim}"
        if not np.all(np.isfinite(actions)):
            return "actions contain NaN/inf"
        if self.arm == "delta":
            if state is None:
                return "delta actions need the measured state at observation time"
            q = np.asarray(state, dtype=np.float64).reshape(-1)
            if q.size < self.dof or not np.all(np.isfinite(q[: self.dof])):
                return f"observation state must hold {self.dof} finite joint positions for delta actions"
        return None

    def resolve_arm(self, actions: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """(horizon, dof) positions (absolute/delta) or velocities (velocity) from raw actions."""
        arm = np.asarray(actions[:, : self.dof], dtype=np.float64)
        if self.arm == "absolute":
            return arm.copy()
        if self.arm == "delta":
            q = np.asarray(state, dtype=np.float64).reshape(-1)[: self.dof]
            return q[None, :] + self.arm_scale * arm
        return self.arm_scale * arm

    def unresolve_arm(self, arm: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """The raw arm action :meth:`resolve_arm` maps to ``arm`` (dof,) (delta: relative to ``state``)."""
        arm = np.asarray(arm, dtype=np.float64)
        if self.arm == "delta":
            q = np.asarray(state, dtype=np.float64).reshape(-1)[: self.dof]
            return (arm - q) / self.arm_scale
        if self.arm == "velocity":
            return arm / self.arm_scale
        return arm.copy()

    def raw_gripper(self, actions: np.ndarray) -> np.ndarray | None:
        """(horizon,) raw gripper values, or None when the policy does not drive the gripper."""
        if self.gripper == "none":
            return None
        return np.asarray(actions[:, self.gripper_column], dtype=np.float64).copy()

    def gripper_width(self, raw: float) -> float | None:
        """Width (m) for one (possibly blended) raw gripper value; None if not finite or gripper unused."""
        if self.gripper == "none" or not math.isfinite(raw):
            return None
        if self.gripper == "absolute":
            return min(max(raw, 0.0), self.max_width)
        is_high = raw >= self.gripper_threshold
        return self.open_width if is_high == self.binary_high_is_open else self.closed_width
