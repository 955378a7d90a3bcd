"""The safety filter: turns any target (even NaN or absurd) into a command that is safe to send.

State carried from tick to tick is the previous COMMAND (positions ``q`` and velocities ``u`` at the command
point), never the measured state. Between two commands the motion is one of constant acceleration: a step of
length ``dt`` picks the next velocity ``u1`` and ``q1 = q0 + dt (u0 + u1) / 2``. That is exactly the cubic a
joint_trajectory_controller builds from (positions, velocities) points, so the guarantees below hold for the
interpolated path the arm executes, not only at the points. ``u1`` is chosen inside:

* ``|u1| <= v_max``                                            (velocity limit)
* ``|u1 - u0| <= a_max dt``                                    (acceleration limit, vs. the previous command)
* ``q1 + u1 |u1| / (2 a_max) + u1 dt / 2`` inside ``[lower, upper]``  (braking: can still stop inside)

where ``[lower, upper]`` are the joint limits shrunk by ``margin``. The braking term bounds the distance of
braking at ``a_max`` in whole steps. If the previous command satisfies it, braking (``u1 = u0 - clip(u0,
±a_max dt)``) satisfies all three, so the set is never empty and the invariant holds forever by induction:
every command is finite, inside the limits, within the velocity and acceleration limits (also between the
points), and the arm can always come to rest inside the limits.

Targets are first cleaned: a non-finite target (or one of the wrong shape) becomes a brake; a target farther
than ``max_deviation`` from the measured state is clamped to that distance, then into the limits (this bounds
the *target*: the command itself must respect the acceleration limit and may brake past it). The tracking
law asks for ``u = ff + sign(e) min(k |e|, sqrt(2 a_track |e|))`` (``e`` = target - command, ``ff`` the
target's own velocity, ``k = 0.34 / dt`` critically damped in discrete time, ``a_track = a_max / 2``), which
lands on a still target without overshoot; the limits above then clip it.

Every clamp is reported as an intervention: limit name -> indices of the joints it changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from apt_policy.control.limits import JointLimits

# Intervention names, in the order they are applied.
NONFINITE = "nonfinite"  # target NaN/inf or wrong shape: braked instead
POSITION = "position"  # target outside [lower + margin, upper - margin]: clamped
DEVIATION = "deviation"  # target farther than max_deviation from the measured state: clamped
VELOCITY = "velocity"  # velocity limit bound the step
ACCELERATION = "acceleration"  # acceleration limit bound the step
BRAKING = "braking"  # stopping distance to a position limit bound the step
INFEASIBLE = "infeasible"  # previous command violated the invariant (never expected): braked
LIMIT_NAMES = (NONFINITE, POSITION, DEVIATION, VELOCITY, ACCELERATION, BRAKING, INFEASIBLE)

_TOL = 1e-12


@dataclass(frozen=True)
class SafetyConfig:
    """Parameters of :class:`SafetyFilter`.

    margin          rad, kept from each position limit (scalar or per joint)        default 0.05
    velocity_scale  fraction of the profile's velocity limits used                  default 0.5
    accel_scale     fraction of the profile's acceleration limits used              default 0.5
    max_deviation   rad, largest |target - measured| per joint (inf disables)       default 0.25
    """

    margin: float | tuple[float, ...] = 0.05
    velocity_scale: float = 0.5
    acceleration_scale: float = 0.5
    max_deviation: float = 0.25

    def __post_init__(self) -> None:
        for name in ("velocity_scale", "acceleration_scale"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0 < value <= 1):
                raise ValueError(f"SafetyConfig.{name} must be in (0, 1], got {value}")
        margin = np.asarray(self.margin, dtype=np.float64)
        if not np.all(np.isfinite(margin)) or np.any(margin < 0):
            raise ValueError(f"SafetyConfig.margin must be finite and >= 0, got {self.margin}")
        if not (self.max_deviation > 0):  # inf allowed, NaN refused
            raise ValueError(f"SafetyConfig.max_deviation must be > 0, got {self.max_deviation}")


@dataclass(frozen=True, eq=False)
class CommandState:
    """A command: joint positions (rad) and joint velocities at that point (rad/s)."""

    positions: np.ndarray
    velocities: np.ndarray

    def copy(self) -> CommandState:
        return CommandState(self.positions.copy(), self.velocities.copy())


@dataclass(frozen=True)
class Interventions:
    """What the filter changed in one step: limit name -> joint indices it clipped."""

    by_limit: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(self.by_limit.values())

    def describe(self, names: tuple[str, ...] | None = None) -> str:
        parts = []
        for limit, joints in self.by_limit.items():
            if joints:
                labels = [names[j] if names else str(j) for j in joints]
                parts.append(f"{limit}: {', '.join(labels)}")
        return "; ".join(parts)

    @staticmethod
    def merge(*items: Interventions) -> Interventions:
        merged: dict[str, set[int]] = {}
        for item in items:
            for limit, joints in item.by_limit.items():
                merged.setdefault(limit, set()).update(joints)
        return Interventions({k: tuple(sorted(v)) for k, v in merged.items() if v})


class SafetyFilter:
    """Stateless safety filter for one control period ``dt`` (s); see the module docstring.

    ``track`` moves towards a target, ``brake`` decelerates to rest at ``a_max``; both take and return a
    :class:`CommandState` and never raise on bad targets.
    """

    def __init__(self, limits: JointLimits, config: SafetyConfig | None = None, dt: float = 0.01) -> None:
        if not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"control dt must be a finite number of seconds > 0, got {dt}")
        self.config = config or SafetyConfig()
        self.limits = limits
        self.dt = float(dt)
        margin = np.broadcast_to(np.asarray(self.config.margin, dtype=np.float64), (limits.dof,))
        self.lower = limits.lower + margin
        self.upper = limits.upper - margin
        if np.any(self.lower >= self.upper):
            raise ValueError("SafetyConfig.margin leaves no room between the position limits")
        self.v_max = limits.velocity * self.config.velocity_scale
        self.a_max = limits.acceleration * self.config.acceleration_scale
        self.dv = self.a_max * self.dt  # largest velocity change per step
        self._dv2 = self.dv * self.dv
        self._two_a = 2.0 * self.a_max
        self._two_a_track = self.a_max  # 2 * a_track with a_track = a_max / 2
        self._gain = 0.34 / self.dt  # discrete critical damping of the linear zone (real poles)
        self._neg_v_max = -self.v_max
        self._zeros = np.zeros(limits.dof)
        self._check_deviation = bool(np.isfinite(self.config.max_deviation))
        for arr in (self.lower, self.upper, self.v_max, self.a_max, self.dv, self._dv2, self._two_a):
            arr.setflags(write=False)
        for arr in (self._neg_v_max, self._zeros):
            arr.setflags(write=False)

    @property
    def dof(self) -> int:
        return self.limits.dof

    # ------------------------------------------------------------------------------------------- states

    def check_start(self, measured: np.ndarray) -> str | None:
        """Why ``measured`` cannot be the first command (None if it can): bad shape, NaN, outside limits."""
        q = np.asarray(measured, dtype=np.float64)
        if q.shape != (self.dof,):
            return f"joint state has {q.size} values, expected {self.dof}"
        if not np.all(np.isfinite(q)):
            return "joint state contains NaN/inf"
        outside = np.flatnonzero((q < self.lower - 1e-9) | (q > self.upper + 1e-9))
        if outside.size:
            detail = ", ".join(
                f"{self.limits.names[j]}={q[j]:.4f} not in [{self.lower[j]:.4f}, {self.upper[j]:.4f}]"
                for j in outside
            )
            return f"measured joints outside the safe range (limits minus margin): {detail}"
        return None

    def start_state(self, measured: np.ndarray) -> CommandState:
        """The first command: the measured state at rest. Raises ValueError if it is not a safe start."""
        reason = self.check_start(measured)
        if reason is not None:
            raise ValueError(reason)
        q = np.clip(np.asarray(measured, dtype=np.float64), self.lower, self.upper)
        return CommandState(q, np.zeros(self.dof))

    def is_safe(self, state: CommandState, tol: float = 1e-9) -> bool:
        """The invariant: finite, inside the limits, within v_max, and able to stop inside the limits."""
        q, u = state.positions, state.velocities
        if q.shape != (self.dof,) or u.shape != (self.dof,):
            return False
        if not (np.isfinite(q).all() and np.isfinite(u).all()):
            return False
        stop = q + u * np.abs(u) / (2 * self.a_max) + u * self.dt / 2
        return bool(
            np.all(q >= self.lower - tol)
            and np.all(q <= self.upper + tol)
            and np.all(np.abs(u) <= self.v_max + tol)
            and np.all(stop >= self.lower - tol)
            and np.all(stop <= self.upper + tol)
        )

    # --------------------------------------------------------------------------------------------- steps

    def brake(self, state: CommandState) -> CommandState:
        """One step of braking at ``a_max`` towards rest (stays put once at rest)."""
        return self._step(state, self._zeros, {})[0]

    def track(
        self,
        state: CommandState,
        target: np.ndarray,
        measured: np.ndarray | None = None,
        target_velocity: np.ndarray | None = None,
    ) -> tuple[CommandState, Interventions]:
        """One step towards ``target`` (rad) with optional feed-forward ``target_velocity`` (rad/s)."""
        notes: dict[str, tuple[int, ...]] = {}
        target = np.asarray(target, dtype=np.float64)
        if target.shape != (self.dof,) or not np.isfinite(target).all():
            notes[NONFINITE] = tuple(range(self.dof))
            return self._step(state, self._zeros, notes)
        q0 = state.positions
        clamped = None
        m = self._usable_measured(measured)
        if m is not None:
            d = self.config.max_deviation
            near = np.minimum(np.maximum(target, m - d), m + d)
            clamped = near != target
            if clamped.any():
                _note(notes, DEVIATION, clamped)
            target = near
        inside = np.minimum(np.maximum(target, self.lower), self.upper)
        changed = inside != target
        if changed.any():
            _note(notes, POSITION, changed)
        clamped = changed if clamped is None else clamped | changed
        target = inside

        err = target - q0
        abs_err = np.abs(err)
        v_des = np.sign(err) * np.minimum(self._gain * abs_err, np.sqrt(self._two_a_track * abs_err))
        if target_velocity is not None:
            tv = np.asarray(target_velocity, dtype=np.float64)
            if tv.shape == (self.dof,):
                ok = np.isfinite(tv) & ~clamped
                v_des = v_des + np.where(ok, np.minimum(np.maximum(tv, -self.v_max), self.v_max), 0.0)
        return self._step(state, v_des, notes)

    def follow_velocity(
        self, state: CommandState, velocity: np.ndarray, measured: np.ndarray | None = None
    ) -> tuple[CommandState, Interventions]:
        """One step towards the joint ``velocity`` (rad/s), integrated over ``dt`` from the command."""
        notes: dict[str, tuple[int, ...]] = {}
        v = np.asarray(velocity, dtype=np.float64)
        if v.shape != (self.dof,) or not np.isfinite(v).all():
            notes[NONFINITE] = tuple(range(self.dof))
            return self._step(state, self._zeros, notes)
        m = self._usable_measured(measured)
        if m is not None:
            d, q0, u0 = self.config.max_deviation, state.positions, state.velocities
            # keep the next command within d of the measured state (if already beyond it, only slowing down
            # and moving back towards it are allowed)
            v_hi = np.maximum(2 * (m + d - q0) / self.dt - u0, np.minimum(u0, 0.0))
            v_lo = np.minimum(2 * (m - d - q0) / self.dt - u0, np.maximum(u0, 0.0))
            near = np.minimum(np.maximum(v, v_lo), v_hi)
            changed = near != v
            if changed.any():
                _note(notes, DEVIATION, changed)
            v = near
        return self._step(state, v, notes)

    def _usable_measured(self, measured: np.ndarray | None) -> np.ndarray | None:
        if measured is None or not self._check_deviation:
            return None
        m = np.asarray(measured, dtype=np.float64)
        return m if m.shape == (self.dof,) and np.isfinite(m).all() else None

    def _step(
        self, state: CommandState, u_des: np.ndarray, notes: dict[str, tuple[int, ...]]
    ) -> tuple[CommandState, Interventions]:
        q0, u0 = state.positions, state.velocities
        dv, half_dt = self.dv, 0.5 * self.dt
        # Largest speed towards each limit that still allows braking inside it after this step.
        room_up = np.maximum(self.upper - q0 - half_dt * u0, 0.0)
        room_down = np.maximum(q0 + half_dt * u0 - self.lower, 0.0)
        stop_up = np.sqrt(self._dv2 + self._two_a * room_up) - dv
        stop_down = np.sqrt(self._dv2 + self._two_a * room_down) - dv
        acc_hi, acc_lo = u0 + dv, u0 - dv
        hi = np.minimum(np.minimum(self.v_max, acc_hi), stop_up)
        lo = np.maximum(np.maximum(self._neg_v_max, acc_lo), -stop_down)
        u1 = np.minimum(np.maximum(u_des, lo), hi)
        infeasible = lo > hi
        if infeasible.any():  # only if the previous command broke the invariant (rounding): brake
            brake = u0 - np.minimum(np.maximum(u0, -dv), dv)
            u1 = np.where(infeasible, brake, u1)
            _note(notes, INFEASIBLE, infeasible)
        q1 = np.minimum(np.maximum(q0 + half_dt * (u0 + u1), self.lower), self.upper)

        over, under = u_des > hi + _TOL, u_des < lo - _TOL
        bound = (over | under) & ~infeasible
        if bound.any():
            # which bound was the binding one, per joint
            for name, up, down in (
                (VELOCITY, hi == self.v_max, lo == self._neg_v_max),
                (ACCELERATION, hi == acc_hi, lo == acc_lo),
                (BRAKING, hi == stop_up, lo == -stop_down),
            ):
                mask = bound & ((over & up) | (under & down))
                if mask.any():
                    _note(notes, name, mask)
                    bound = bound & ~mask
        return CommandState(q1, u1), Interventions(notes)


def _note(notes: dict[str, tuple[int, ...]], name: str, mask: np.ndarray) -> None:
    joints = tuple(int(j) for j in np.flatnonzero(mask))
    if joints:
        notes[name] = tuple(sorted(set(notes.get(name, ())).union(joints)))
