"""What the joint_trajectory_controller executes, so that every trajectory sent is feasible when it arrives.

A JTC streamed with ``interpolate_from_desired_state`` (Jazzy) / ``open_loop_control`` (Humble) starts each
new trajectory from its *desired* state at the moment the message arrives (``header.stamp = 0``), or at the
stamp (stamped trajectories; points already due are sampled at the arrival time). What the arm does
therefore depends on when a command arrives, not only on what it says. A stream that plans each tick from
its own previous command assumes every message arrives one period after the previous one: a tick that
comes late (missed ticks, the process stalled) finds the JTC already further along the previous look-ahead,
or braking at its end, and the next first segment runs back over that distance in one period (the
``too_fast`` violations of issue #17: 5 rad/s after a stall of ~100 ms).

:class:`ExecutedPlan` is a sent trajectory as the JTC executes it: knots at times relative to its start,
the first knot (time 0) being the state it starts from, cubic Hermite between knots (exactly the filter's
constant-acceleration motion for knots the safety filter produced), at rest after the last one. The
controller plans every tick from :meth:`ExecutedPlan.state_at` of the last trajectory *released* at the
time the new one is expected to arrive, and :func:`arrival_problem` checks, at send time, that the new
trajectory is feasible from the JTC's desired state at the actual arrival.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apt_policy.control.safety import CommandState

KNOT_SNAP_S = 1e-9  # this close to a knot is the knot: on-time ticks stay exactly on the filter's chain


@dataclass(frozen=True, eq=False)
class ExecutedPlan:
    """A trajectory as the JTC executes it.

    start          clock time (s) of knot 0: the arrival for ``stamp = 0``, the stamp for stamped ones
    times          (N,) s from ``start``, ``times[0] == 0``, strictly increasing
    positions      (N, dof) rad; knot 0 is the desired state the trajectory starts from
    velocities     (N, dof) rad/s
    accelerations  (N, dof) rad/s², the acceleration of the step that reached each knot (knot 0: that of
                   the state it starts from)
    """

    start: float
    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray

    @staticmethod
    def from_states(
        start: float, first: CommandState, times: np.ndarray, positions: np.ndarray, velocities: np.ndarray
    ) -> ExecutedPlan:
        """The plan that starts from ``first`` at ``start`` and passes the points ``times`` (> 0) after it."""
        all_times = np.concatenate([[0.0], np.asarray(times, dtype=np.float64)])
        all_pos = np.vstack([first.positions[None], positions])
        all_vel = np.vstack([first.velocities[None], velocities])
        acc = np.empty_like(all_vel)
        acc[0] = first.acc
        acc[1:] = np.diff(all_vel, axis=0) / np.diff(all_times)[:, None]
        return ExecutedPlan(float(start), all_times, all_pos, all_vel, acc)

    @staticmethod
    def resting(start: float, state: CommandState) -> ExecutedPlan:
        """Holding ``state`` (at rest) from ``start`` on."""
        zero = np.zeros((1, state.positions.size))
        return ExecutedPlan(float(start), np.zeros(1), state.positions[None].copy(), zero, zero.copy())

    @property
    def end(self) -> float:
        """Clock time at which the plan reaches its last point (at rest)."""
        return self.start + float(self.times[-1])

    def shifted(self, start: float) -> ExecutedPlan:
        """The same plan starting at ``start`` (a ``stamp = 0`` trajectory starts when it arrives)."""
        return ExecutedPlan(float(start), self.times, self.positions, self.velocities, self.accelerations)

    def state_at(self, t: float) -> CommandState:
        """The JTC's desired state at clock time ``t`` (before the start: knot 0; after the end: at rest)."""
        times, p, v = self.times, self.positions, self.velocities
        tau = t - self.start
        k = int(np.searchsorted(times, tau))
        for knot in (k - 1, k):  # on a knot (within rounding): exactly that knot's state
            if 0 <= knot < len(times) and abs(times[knot] - tau) <= KNOT_SNAP_S:
                if knot == len(times) - 1:
                    return CommandState(p[-1].copy(), np.zeros_like(v[-1]), np.zeros_like(v[-1]))
                return CommandState(p[knot].copy(), v[knot].copy(), self.accelerations[knot].copy())
        if k == 0:
            return CommandState(p[0].copy(), v[0].copy(), self.accelerations[0].copy())
        if k >= len(times):
            zero = np.zeros_like(v[-1])
            return CommandState(p[-1].copy(), zero, zero.copy())
        i = k - 1
        h = times[k] - times[i]
        s = (tau - times[i]) / h
        m0, m1 = v[i] * h, v[k] * h
        s2, s3 = s * s, s * s * s
        pos = (2 * s3 - 3 * s2 + 1) * p[i] + (s3 - 2 * s2 + s) * m0
        pos = pos + (-2 * s3 + 3 * s2) * p[k] + (s3 - s2) * m1
        vel = ((6 * s2 - 6 * s) * (p[i] - p[k]) + (3 * s2 - 4 * s + 1) * m0 + (3 * s2 - 2 * s) * m1) / h
        return CommandState(pos, vel, self.accelerations[k].copy())


JTC_CYCLE = 1e-3  # s: the arm controller's update period (FR3: 1 kHz), over which a jump is judged


def arrival_problem(
    previous: CommandState | ExecutedPlan,
    plan: ExecutedPlan,
    arrival: float,
    velocity_limit: np.ndarray,
    stamped: bool,
    names: tuple[str, ...] | None = None,
    jump_period: float = JTC_CYCLE,
) -> str | None:
    """Why the JTC could not follow ``plan`` if it arrived at ``arrival`` (None when it can).

    ``previous``: what the JTC executes until then (the last released plan, or the state it holds).
    ``stamp = 0``: ``plan`` starts at the arrival, from the desired state then, to its first point
    ``times[1]`` later. Stamped: it starts at ``plan.start``; before its first point is due the JTC
    interpolates from the desired state at arrival to it; once points are due it jumps onto the plan
    sampled at the arrival. Either must stay within ``velocity_limit`` (the hardware's, rad/s): a jump is
    judged over one controller cycle ``jump_period``.
    """
    desired = previous.state_at(arrival) if isinstance(previous, ExecutedPlan) else previous
    first_t = plan.start + plan.times[1] - arrival if stamped else plan.times[1]
    if stamped and arrival > plan.end:
        return f"it would arrive {(arrival - plan.end) * 1e3:.1f} ms after its end"
    if stamped and first_t <= 0:
        step = np.abs(plan.state_at(arrival).positions - desired.positions)
        speed = step / jump_period
        what = "jump onto the plan"
    else:
        speed = np.abs(plan.positions[1] - desired.positions) / max(first_t, jump_period)
        what = "first segment from the desired state"
    over = speed > velocity_limit
    if not over.any():
        return None
    j = int(np.argmax(speed / velocity_limit))
    joint = names[j] if names else f"joint {j}"
    return f"{what} at arrival would need {speed[j]:.2f} rad/s on {joint} (limit {velocity_limit[j]:.2f})"
