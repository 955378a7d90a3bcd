"""The safety filter: turns any target (even NaN or absurd) into a command that is safe to send.

State carried from tick to tick is the previous COMMAND (positions ``q``, velocities ``u`` at the command
point and the acceleration ``α`` of the last step), never the measured state. Between two commands the
motion has constant acceleration: a step of length ``dt`` picks the next velocity ``u1``,
``α1 = (u1 - u0) / dt`` and ``q1 = q0 + dt (u0 + u1) / 2``. That is exactly the cubic a
joint_trajectory_controller builds from (position, velocity) points, so the limits hold on the interpolated
path the arm executes, not only at the points. ``u1`` is chosen inside:

* ``|u1| <= v_max``                                        (velocity limit)
* ``|α1| <= A`` and ``|α1 - α0| <= J``                     (acceleration; its jump at a point, see below)
* braking: ``q1 + u1²/(2A) + u1 dt/2 (+ u1 dt if α1 > J - A)`` inside ``[lower, upper]`` for ``u1 > 0``
  (mirrored for ``u1 < 0``): braking at ``A`` in whole steps, after at most one step spent ramping the
  acceleration down, stops inside the limits.

``[lower, upper]`` are the joint limits shrunk by ``margin``. The acceleration jumps at each point; the robot
samples the interpolated path every ``robot_period`` (1 ms on a Franka), so a jump ``J`` there is a jerk of
``J / robot_period``: ``J = jerk * jerk_scale * robot_period``, and ``A = min(a_max * acceleration_scale, J)``
(with ``A <= J`` full braking is always reachable within one step). If the previous command satisfies the
braking condition, braking (``α1 = max(α0 - J, -A, -u0/dt)`` for ``u0 > 0``) satisfies all bounds, so the
feasible set is never empty and the invariant holds forever by induction: every command is finite, inside the
limits, within the velocity, acceleration and jerk limits, and the arm can always come to rest inside them.

Targets are first cleaned: a non-finite target (or one of the wrong shape) becomes a brake; a target farther
than ``max_deviation`` from the measured state is clamped to that distance, then into the limits (this bounds
the *target*: the command itself must respect the acceleration limit and may brake past it). The tracking
law asks for ``u = ff + sign(e) min(k |e|, sqrt(2 a_track |e|))`` (``e`` = target - command, ``ff`` the
target's own velocity, ``k = 0.34 / dt`` critically damped in discrete time, ``a_track = A / 2``), which
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
ACCELERATION = "acceleration"  # acceleration (or jerk: its change per step) limit bound the step
BRAKING = "braking"  # stopping distance to a position limit bound the step
INFEASIBLE = "infeasible"  # previous command violated the invariant (never expected): braked
LIMIT_NAMES = (NONFINITE, POSITION, DEVIATION, VELOCITY, ACCELERATION, BRAKING, INFEASIBLE)

_TOL = 1e-12


@dataclass(frozen=True)
class SafetyConfig:
    """Parameters of :class:`SafetyFilter`.

    margin              rad, kept from each position limit (scalar or per joint)       default 0.05
    velocity_scale      fraction of the profile's velocity limits used                 default 0.5
    acceleration_scale  fraction of the profile's acceleration limits used             default 0.5
    jerk_scale          fraction of the profile's jerk limits used (if it has some)    default 0.8
    robot_period        s, the robot's command period the jerk is judged at            default 0.001
    max_deviation       rad, largest |target - measured| per joint (inf disables)      default 0.25
    """

    margin: float | tuple[float, ...] = 0.05
    velocity_scale: float = 0.5
    acceleration_scale: float = 0.5
    jerk_scale: float = 0.8
    robot_period: float = 0.001
    max_deviation: float = 0.25

    def __post_init__(self) -> None:
        for name in ("velocity_scale", "acceleration_scale", "jerk_scale"):
            value = getattr(self, name)
            if not (np.isfinite(value) and 0 < value <= 1):
                raise ValueError(f"SafetyConfig.{name} must be in (0, 1], got {value}")
        if not (np.isfinite(self.robot_period) and self.robot_period > 0):
            raise ValueError(f"SafetyConfig.robot_period must be > 0 s, got {self.robot_period}")
        margin = np.asarray(self.margin, dtype=np.float64)
        if not np.all(np.isfinite(margin)) or np.any(margin < 0):
            raise ValueError(f"SafetyConfig.margin must be finite and >= 0, got {self.margin}")
        if not (self.max_deviation > 0):  # inf allowed, NaN refused
            raise ValueError(f"SafetyConfig.max_deviation must be > 0, got {self.max_deviation}")


@dataclass(frozen=True, eq=False)
class CommandState:
    """A command: joint positions (rad), velocities at that point (rad/s) and the acceleration of the step
    that reached it (rad/s²; zeros when unknown, e.g. at rest)."""

    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.accelerations is None:
            object.__setattr__(self, "accelerations", np.zeros_like(self.velocities))

    @property
    def acc(self) -> np.ndarray:
        """The accelerations (never None after construction)."""
        assert self.accelerations is not None
        return self.accelerations

    def copy(self) -> CommandState:
        return CommandState(self.positions.copy(), self.velocities.copy(), self.acc.copy())


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
        a_max = limits.acceleration * self.config.acceleration_scale
        if limits.jerk is None:
            self.j_step = np.full(limits.dof, np.inf)  # largest change of acceleration per step
        else:
            self.j_step = limits.jerk * self.config.jerk_scale * self.config.robot_period
        self.a_max = np.minimum(a_max, self.j_step)  # A <= J: full braking is reachable within one step
        self.dv = self.a_max * self.dt  # largest velocity change per step
        self._dv2 = self.dv * self.dv
        self._two_a = 2.0 * self.a_max
        self._ramp = (self.j_step - self.a_max) * self.dt  # u1 - u0 above this: one ramp step before braking
        self._two_a_track = self.a_max  # 2 * a_track with a_track = A / 2
        self._gain = 0.34 / self.dt  # discrete critical damping of the linear zone (real poles)
        self._neg_v_max = -self.v_max
        self._zeros = np.zeros(limits.dof)
        self._check_deviation = bool(np.isfinite(self.config.max_deviation))
        for arr in (self.lower, self.upper, self.v_max, self.a_max, self.j_step, self.dv, self._dv2):
            arr.setflags(write=False)
        for arr in (self._two_a, self._ramp, self._neg_v_max, self._zeros):
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
        """The invariant: finite, inside the limits, within v_max and A, able to stop inside the limits."""
        q, u, acc = state.positions, state.velocities, state.acc
        if q.shape != (self.dof,) or u.shape != (self.dof,) or acc.shape != (self.dof,):
            return False
        if not (np.isfinite(q).all() and np.isfinite(u).all() and np.isfinite(acc).all()):
            return False
        # braking starts a step late after accelerating by more than J - A (1e-9: rounding of acc)
        ramp = np.where(np.sign(u) * acc * self.dt > self._ramp + 1e-9, np.abs(u) * self.dt, 0.0)
        reach = u * np.abs(u) / (2 * self.a_max) + u * self.dt / 2 + np.sign(u) * ramp
        return bool(
            np.all(q >= self.lower - tol)
            and np.all(q <= self.upper + tol)
            and np.all(np.abs(u) <= self.v_max + tol)
            and np.all(np.abs(acc) <= self.a_max + tol)
            and np.all(q + reach >= self.lower - tol)
            and np.all(q + reach <= self.upper + tol)
        )

    # --------------------------------------------------------------------------------------------- steps

    def brake(self, state: CommandState) -> CommandState:
        """One step of braking at ``a_max`` towards rest (stays put once at rest)."""
        # = self._step(state, 0): from a state satisfying the invariant, braking needs no other bound
        q0, u0, acc0 = state.positions, state.velocities, state.accelerations
        acc_hi = u0 + np.minimum(self.a_max, acc0 + self.j_step) * self.dt
        acc_lo = u0 + np.maximum(-self.a_max, acc0 - self.j_step) * self.dt
        u1 = np.minimum(np.maximum(0.0, acc_lo), acc_hi)
        q1 = np.minimum(np.maximum(q0 + 0.5 * self.dt * (u0 + u1), self.lower), self.upper)
        return CommandState(q1, u1, (u1 - u0) / self.dt)

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
        q0, u0, acc0 = state.positions, state.velocities, state.accelerations
        dt, half_dt = self.dt, 0.5 * self.dt
        # acceleration and its change per step (jerk at the point)
        acc_hi = u0 + np.minimum(self.a_max, acc0 + self.j_step) * dt
        acc_lo = u0 + np.maximum(-self.a_max, acc0 - self.j_step) * dt
        # largest speed towards each limit that still allows braking inside it after this step
        stop_up = self._brake_bound(np.maximum(self.upper - q0 - half_dt * u0, 0.0), u0 + self._ramp)
        stop_down = self._brake_bound(np.maximum(q0 + half_dt * u0 - self.lower, 0.0), -u0 + self._ramp)
        hi = np.minimum(np.minimum(self.v_max, acc_hi), stop_up)
        lo = np.maximum(np.maximum(self._neg_v_max, acc_lo), -stop_down)
        u1 = np.minimum(np.maximum(u_des, lo), hi)
        infeasible = lo > hi
        if infeasible.any():  # only if the previous command broke the invariant (rounding): brake
            brake = np.minimum(np.maximum(0.0, acc_lo), acc_hi)
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
        return CommandState(q1, u1, (u1 - u0) / dt), Interventions(notes)

    def _brake_bound(self, room: np.ndarray, ramp_from: np.ndarray) -> np.ndarray:
        """Largest speed towards a limit ``room`` away (after half a step at ``u0``) that can still brake
        inside it: ``u²/(2A) + u dt <= room``, or ``u²/(2A) + 2 u dt <= room`` when reaching ``u`` needs an
        acceleration above ``J - A`` (``u > ramp_from``), because braking then starts one step later."""
        dv = self.dv
        direct = np.sqrt(self._dv2 + self._two_a * room) - dv
        delayed = np.sqrt(4.0 * self._dv2 + self._two_a * room) - 2.0 * dv
        return np.maximum(np.minimum(direct, ramp_from), delayed)


def _note(notes: dict[str, tuple[int, ...]], name: str, mask: np.ndarray) -> None:
    joints = tuple(int(j) for j in np.flatnonzero(mask))
    if joints:
        notes[name] = tuple(sorted(set(notes.get(name, ())).union(joints)))
