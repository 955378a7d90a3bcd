"""A simulated Franka arm behind ros2_control-like command interfaces (ROS-free, numpy only).

:class:`SimArm` is the logic of the ``fake_franka`` node. It follows joint trajectories with the
semantics of ros2_controllers' ``joint_trajectory_controller`` (JTC), or position commands with the
semantics of a forward position controller, and tracks the resulting desired state with a limited
bandwidth, inside the robot's velocity, acceleration and position limits. Every command that breaks
the robot's contract is counted by kind (see ``VIOLATION_KINDS``) and reported through ``on_violation``.

JTC semantics implemented (the contract a streaming client must satisfy):

* ``stamp == 0`` means "start now"; otherwise the trajectory starts at ``stamp`` (seconds, same clock as
  the ``now`` passed in). A trajectory whose last point lies in the past is rejected (``ends_in_past``).
* A new trajectory replaces the current one from its start time (until then the old one keeps running;
  a newer not-yet-started trajectory replaces a pending one).
* ``time_from_start`` must strictly increase (``time_not_increasing``); joints are matched by name in any
  order and every joint of the arm must be present exactly once (``joint_names``).
* Interpolation starts from the current *desired* state (``open_loop_control`` /
  ``interpolate_from_desired_state``), toward the first point. A stamped trajectory whose first points
  are already due when it arrives is sampled at the current time, as JTC does; if that moves the desired
  position faster than the velocity limit within one control cycle, it is a jump (``too_fast``).
  Positions only: linear; positions + velocities: cubic Hermite.
* The last point must have zero velocity unless ``allow_nonzero_velocity_at_trajectory_end``
  (``nonzero_end_velocity``; the jazzy default is to reject).
* After the last point the arm holds its final position.

Beyond JTC (what a real arm would punish): non-finite values (``non_finite``) and targets outside the
position limits (``outside_limits``) are rejected; segments that need more than the velocity limit
(``too_fast``) are counted but executed, with tracking saturated at the limits (a real FR3 would stop
with a reflex).

Forward position commands: the target is held until the next command (no timeout). A command is
``too_fast`` when it implies more than the velocity limit relative to the previous command over the
inter-arrival time (or relative to the measured position if no command came in the last
``forward_stream_window`` seconds, over that window).
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from apt_policy.robots.franka import FR3, RobotProfile

__all__ = [
    "VIOLATION_KINDS",
    "ArrivalLog",
    "ContractViolationError",
    "SimArm",
    "TrajectoryFollower",
]

VIOLATION_KINDS = (
    "non_finite",
    "joint_names",
    "time_not_increasing",
    "outside_limits",
    "too_fast",
    "ends_in_past",
    "nonzero_end_velocity",
    "malformed",
    "gripper",
)


class ContractViolationError(ValueError):
    """A command broke the robot's contract; ``kind`` is one of ``VIOLATION_KINDS``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass(frozen=True)
class _Prepared:
    """A validated trajectory in the profile's joint order, times relative to ``start``."""

    start: float
    times: np.ndarray  # (N,)
    positions: np.ndarray  # (N, dof)
    velocities: np.ndarray | None  # (N, dof)


@dataclass(frozen=True)
class _Knots:
    """An active trajectory: absolute knot times, positions and (optional) velocities."""

    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray | None

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        times = self.times
        if t >= times[-1]:
            return self.positions[-1].copy(), np.zeros(self.positions.shape[1])
        if t < times[0]:
            return self.positions[0].copy(), np.zeros(self.positions.shape[1])
        i = int(np.searchsorted(times, t, side="right")) - 1
        h = times[i + 1] - times[i]
        s = (t - times[i]) / h
        p0, p1 = self.positions[i], self.positions[i + 1]
        if self.velocities is None:
            return p0 + s * (p1 - p0), (p1 - p0) / h
        v0, v1 = self.velocities[i] * h, self.velocities[i + 1] * h
        s2, s3 = s * s, s * s * s
        pos = (2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * v0 + (-2 * s3 + 3 * s2) * p1 + (s3 - s2) * v1
        vel = (
            (6 * s2 - 6 * s) * p0 + (3 * s2 - 4 * s + 1) * v0 + (-6 * s2 + 6 * s) * p1 + (3 * s2 - 2 * s) * v1
        ) / h
        return pos, vel


class TrajectoryFollower:
    """The desired-state generator of a JTC (no dynamics): validate, schedule, sample."""

    def __init__(
        self,
        profile: RobotProfile,
        q0: np.ndarray,
        allow_nonzero_velocity_at_trajectory_end: bool = False,
        jump_period: float = 1e-3,
    ) -> None:
        self.profile = profile
        self.allow_nonzero_end_velocity = bool(allow_nonzero_velocity_at_trajectory_end)
        self.jump_period = float(jump_period)
        self._active: _Knots | None = None
        self._pending: _Prepared | None = None
        self._hold = np.asarray(q0, dtype=np.float64).copy()
        self.last_desired = (self._hold.copy(), np.zeros(profile.dof))

    def prepare(
        self,
        joint_names: Sequence[str],
        times: Sequence[float],
        positions: Sequence[Sequence[float]],
        velocities: Sequence[Sequence[float]] | None,
        stamp: float,
        now: float,
    ) -> _Prepared:
        """Validate a trajectory message (raise :class:`ContractViolationError`) and reorder its joints."""
        p = self.profile
        names = list(joint_names)
        if len(set(names)) != len(names) or set(names) != set(p.joint_names):
            missing = sorted(set(p.joint_names) - set(names))
            extra = sorted(set(names) - set(p.joint_names))
            raise ContractViolationError(
                "joint_names", f"need each of {list(p.joint_names)} once; missing {missing}, unknown {extra}"
            )
        order = [names.index(n) for n in p.joint_names]
        if len(times) == 0:
            raise ContractViolationError("malformed", "trajectory has no points")
        t = np.asarray(times, dtype=np.float64)
        try:
            pos = np.asarray(positions, dtype=np.float64)
        except ValueError as exc:
            raise ContractViolationError("malformed", f"ragged positions: {exc}") from None
        if pos.shape != (len(t), len(names)):
            raise ContractViolationError(
                "malformed", f"positions shape {pos.shape}, expected {(len(t), len(names))}"
            )
        vel = None
        if velocities is not None:
            try:
                vel = np.asarray(velocities, dtype=np.float64)
            except ValueError as exc:
                raise ContractViolationError("malformed", f"ragged velocities: {exc}") from None
            if vel.shape != pos.shape:
                raise ContractViolationError(
                    "malformed", "velocities must be given for every point and joint, or for none"
                )
        if not (
            np.all(np.isfinite(t)) and np.all(np.isfinite(pos)) and (vel is None or np.all(np.isfinite(vel)))
        ):
            raise ContractViolationError("non_finite", "NaN or infinite time, position or velocity")
        if t[0] < 0 or np.any(np.diff(t) <= 0):
            raise ContractViolationError(
                "time_not_increasing", f"time_from_start must strictly increase, got {t.tolist()}"
            )
        pos = pos[:, order]
        vel = None if vel is None else vel[:, order]
        if not all(p.within_limits(row, tol=1e-9) for row in pos):
            bad = [i for i, row in enumerate(pos) if not p.within_limits(row, tol=1e-9)]
            raise ContractViolationError("outside_limits", f"points {bad} are outside the joint limits")
        if vel is not None and not self.allow_nonzero_end_velocity and np.any(vel[-1] != 0):
            raise ContractViolationError("nonzero_end_velocity", "last point has non-zero velocity")
        start = now if stamp == 0 else float(stamp)
        if start + t[-1] < now:
            raise ContractViolationError("ends_in_past", f"trajectory ended {now - start - t[-1]:.3f} s ago")
        return _Prepared(start, t, pos, vel)

    def segment_speed_violation(self, prepared: _Prepared) -> str | None:
        """A description of the first point-to-point segment faster than the velocity limit, if any."""
        if len(prepared.times) < 2:
            return None
        speed = np.abs(np.diff(prepared.positions, axis=0)) / np.diff(prepared.times)[:, None]
        over = speed > self.profile.velocity * (1 + 1e-6)
        if not over.any():
            return None
        i, j = np.argwhere(over)[0]
        return f"segment {i}->{i + 1} needs {speed[i, j]:.2f} rad/s on {self.profile.joint_names[j]}"

    def submit(self, prepared: _Prepared, now: float) -> str | None:
        """Schedule a validated trajectory: it replaces the current one from its start time.

        Returns a violation note when the trajectory starts at once with a jump or a too-fast first segment.
        """
        self._pending = prepared
        return self._activate(now) if prepared.start <= now else None

    def set_hold(self, q: np.ndarray) -> None:
        """Forget trajectories and hold ``q`` (a forward position command or a reset)."""
        self._active = None
        self._pending = None
        self._hold = np.asarray(q, dtype=np.float64).copy()
        self.last_desired = (self._hold.copy(), np.zeros(self.profile.dof))

    def _activate(self, now: float) -> str | None:
        """Make the pending trajectory active at ``now``; return a note if that is a jump for the arm.

        As in JTC: before the first point the desired state is interpolated from the current desired
        state (at ``now``) to the first point; once points are due (a stamped trajectory that arrived
        late), the desired state is the trajectory itself sampled at ``now``. A change of the desired
        position within less than one control cycle (``jump_period``) faster than the velocity limit
        is reported.
        """
        prepared = self._pending
        assert prepared is not None
        self._pending = None
        q_old, v_old = self.sample_active(now)
        abs_times = prepared.start + prepared.times
        due = np.nonzero(abs_times <= now)[0]
        if len(due) == 0:
            times = np.concatenate([[now], abs_times])
            positions = np.vstack([q_old[None], prepared.positions])
            velocities = None
            if prepared.velocities is not None:
                velocities = np.vstack([v_old[None], prepared.velocities])
        else:  # sample the trajectory itself from the last due point on
            k = int(due[-1])
            times, positions = abs_times[k:], prepared.positions[k:]
            velocities = None if prepared.velocities is None else prepared.velocities[k:]
        self._active = _Knots(times, positions, velocities)
        q_new, _ = self._active.sample(now)
        step = np.abs(q_new - q_old)
        if np.any(step > self.profile.velocity * self.jump_period * (1 + 1e-6)):
            return f"the desired position jumps by {step.max():.4f} rad on arrival"
        if len(times) > 1 and len(due) == 0:
            span = max(times[1] - times[0], self.jump_period)
            first = np.abs(positions[1] - positions[0]) / span
            if np.any(first > self.profile.velocity * (1 + 1e-6)):
                return f"first segment from the desired state needs {first.max():.2f} rad/s"
        return None

    def sample_active(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        if self._active is None:
            return self._hold.copy(), np.zeros(self.profile.dof)
        return self._active.sample(now)

    def desired(self, now: float) -> tuple[tuple[np.ndarray, np.ndarray], str | None]:
        """Desired ``(position, velocity)`` at ``now`` and a violation note if a trajectory just started."""
        note = None
        if self._pending is not None and self._pending.start <= now:
            note = self._activate(now)
        self.last_desired = self.sample_active(now)
        return self.last_desired, note


class ArrivalLog:
    """Receive timestamps (monotonic seconds) of one command stream and their inter-arrival statistics."""

    def __init__(self, max_samples: int = 1_000_000) -> None:
        self.times: deque[float] = deque(maxlen=max_samples)

    def add(self, t: float) -> None:
        self.times.append(float(t))

    def stats(self) -> dict[str, float]:
        """Count and inter-arrival mean / std / percentiles / max in milliseconds."""
        t = np.fromiter(self.times, dtype=np.float64)
        out: dict[str, float] = {"count": float(len(t))}
        if len(t) >= 2:
            d = np.diff(t) * 1e3
            out.update(
                mean_ms=float(d.mean()),
                std_ms=float(d.std()),
                p50_ms=float(np.percentile(d, 50)),
                p90_ms=float(np.percentile(d, 90)),
                p99_ms=float(np.percentile(d, 99)),
                max_ms=float(d.max()),
            )
        return out


class SimArm:
    """Arm + gripper state driven by JTC trajectories, forward position commands and width commands.

    Thread-safe: commands arrive from ROS callbacks while :meth:`step` runs on the physics thread. The
    arm tracks the desired state with a critically damped second-order response of natural frequency
    ``bandwidth`` (rad/s), saturated at the profile's acceleration, velocity and position limits.
    """

    def __init__(
        self,
        profile: RobotProfile = FR3,
        q0: np.ndarray | None = None,
        *,
        bandwidth: float = 40.0,
        gripper_speed: float = 0.1,
        allow_nonzero_velocity_at_trajectory_end: bool = False,
        forward_stream_window: float = 0.1,
        on_violation: Callable[[str, str], None] | None = None,
    ) -> None:
        if bandwidth <= 0 or gripper_speed <= 0 or forward_stream_window <= 0:
            raise ValueError("bandwidth, gripper_speed and forward_stream_window must be > 0")
        q0 = profile.ready_pose if q0 is None else np.asarray(q0, dtype=np.float64)
        if not profile.within_limits(q0):
            raise ValueError("initial joint positions are outside the limits")
        self.profile = profile
        self.bandwidth = float(bandwidth)
        self.gripper_speed = float(gripper_speed)
        self.forward_stream_window = float(forward_stream_window)
        self.on_violation = on_violation
        self.q = q0.copy()
        self.qd = np.zeros(profile.dof)
        self.gripper_width = profile.max_gripper_width
        self.gripper_target = profile.max_gripper_width
        self.follower = TrajectoryFollower(profile, q0, allow_nonzero_velocity_at_trajectory_end)
        self.violations: Counter[str] = Counter({k: 0 for k in VIOLATION_KINDS})
        self.accepted: Counter[str] = Counter({"trajectory": 0, "position": 0, "gripper": 0})
        self._last_forward: tuple[float, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._notes: list[tuple[str, str]] = []

    # ------------------------------------------------------------------------------------------ commands
    def _violation(self, kind: str, message: str) -> None:
        self.violations[kind] += 1
        self._notes.append((kind, message))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock; report violations found meanwhile after releasing it (callbacks may call back)."""
        try:
            with self._lock:
                yield
        finally:
            with self._lock:
                notes, self._notes = self._notes, []
            if self.on_violation is not None:
                for kind, message in notes:
                    self.on_violation(kind, message)

    def submit_trajectory(
        self,
        joint_names: Sequence[str],
        times: Sequence[float],
        positions: Sequence[Sequence[float]],
        velocities: Sequence[Sequence[float]] | None,
        stamp: float,
        now: float,
    ) -> bool:
        """Accept (True) or reject (False, counted) a JTC trajectory; ``stamp == 0`` starts it now."""
        with self._locked():
            try:
                prepared = self.follower.prepare(joint_names, times, positions, velocities, stamp, now)
            except ContractViolationError as exc:
                self._violation(exc.kind, f"trajectory rejected: {exc}")
                return False
            fast = self.follower.segment_speed_violation(prepared)
            if fast is not None:
                self._violation("too_fast", f"trajectory accepted, tracking will saturate: {fast}")
            self._last_forward = None
            note = self.follower.submit(prepared, now)
            if note:
                self._violation("too_fast", f"trajectory accepted, tracking will saturate: {note}")
            self.accepted["trajectory"] += 1
            return True

    def submit_positions(self, values: Sequence[float], now: float) -> bool:
        """Forward position controller command (profile joint order); held until the next one."""
        with self._locked():
            q = np.asarray(values, dtype=np.float64).reshape(-1)
            if q.shape != (self.profile.dof,):
                self._violation(
                    "malformed", f"position command has {q.shape[0]} values, need {self.profile.dof}"
                )
                return False
            if not np.all(np.isfinite(q)):
                self._violation("non_finite", "position command rejected: NaN or infinite")
                return False
            if not self.profile.within_limits(q, tol=1e-9):
                self._violation("outside_limits", f"position command rejected: {q.round(4).tolist()}")
                return False
            if self._last_forward is not None and now - self._last_forward[0] < self.forward_stream_window:
                ref, elapsed = self._last_forward[1], max(now - self._last_forward[0], 1e-3)
            else:
                ref, elapsed = self.q, self.forward_stream_window
            speed = np.abs(q - ref) / elapsed
            if np.any(speed > self.profile.velocity * (1 + 1e-6)):
                j = int(np.argmax(speed / self.profile.velocity))
                self._violation(
                    "too_fast",
                    f"position command implies {speed[j]:.2f} rad/s on {self.profile.joint_names[j]}"
                    f" (limit {self.profile.velocity[j]:.2f}); tracking will saturate",
                )
            self._last_forward = (now, q.copy())
            self.follower.set_hold(q)
            self.accepted["position"] += 1
            return True

    def submit_gripper(self, width: float) -> bool:
        """Gripper width command (m), clipped into ``[0, max_gripper_width]`` if outside (counted)."""
        with self._locked():
            if not math.isfinite(width):
                self._violation("non_finite", "gripper width command rejected: NaN or infinite")
                return False
            if not 0.0 <= width <= self.profile.max_gripper_width:
                self._violation(
                    "gripper",
                    f"gripper width {width:.4f} m outside [0, {self.profile.max_gripper_width}]; clipped",
                )
                width = min(max(width, 0.0), self.profile.max_gripper_width)
            self.gripper_target = float(width)
            self.accepted["gripper"] += 1
            return True

    # -------------------------------------------------------------------------------- simulation only
    def teleport(self, q: Sequence[float]) -> None:
        """Put the arm at rest at ``q`` at once, gripper open, the JTC holding there (a simulation reset:
        what an operator moving the arm to a start pose with another controller leaves behind)."""
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.shape != (self.profile.dof,) or not self.profile.within_limits(q):
            raise ValueError(f"teleport needs {self.profile.dof} finite positions inside the limits, got {q}")
        with self._lock:
            self.q = q.copy()
            self.qd = np.zeros(self.profile.dof)
            self.follower.set_hold(q)
            self._last_forward = None
            self.gripper_width = self.gripper_target = self.profile.max_gripper_width

    def reset_counts(self) -> None:
        """Start the violation and accepted-command counters from zero (a new episode's report)."""
        with self._lock:
            self.violations = Counter({k: 0 for k in VIOLATION_KINDS})
            self.accepted = Counter({"trajectory": 0, "position": 0, "gripper": 0})

    # ------------------------------------------------------------------------------------------ physics
    def step(self, now: float, dt: float) -> None:
        """Advance the simulation by ``dt`` seconds, with the desired state sampled at ``now``."""
        p = self.profile
        with self._locked():
            (q_des, v_des), note = self.follower.desired(now)
            if note:
                self._violation("too_fast", f"trajectory started, tracking will saturate: {note}")
            wn = self.bandwidth
            acc = wn * wn * (q_des - self.q) + 2.0 * wn * (v_des - self.qd)
            acc = np.clip(acc, -p.acceleration, p.acceleration)
            qd = np.clip(self.qd + acc * dt, -p.velocity, p.velocity)
            q = self.q + qd * dt
            at_limit = (q < p.position_lower) | (q > p.position_upper)
            self.q = np.clip(q, p.position_lower, p.position_upper)
            qd[at_limit] = 0.0
            self.qd = qd
            dw = self.gripper_target - self.gripper_width
            self.gripper_width += float(np.clip(dw, -self.gripper_speed * dt, self.gripper_speed * dt))

    def state(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Measured ``(q, qd, gripper_width)`` (copies)."""
        with self._lock:
            return self.q.copy(), self.qd.copy(), self.gripper_width

    def desired(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            q, v = self.follower.last_desired
            return q.copy(), v.copy()

    def violation_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.violations)
