"""The JTC look-ahead: the next few commands as one joint trajectory, every point produced by the filter.

The node sends it each tick with ``header.stamp = 0`` ("start now"). Contract (joint_trajectory_controller):
``time_from_start`` strictly increasing and > 0 for the first point (a first point at 0 is a jump); the last
point at rest (velocity 0: Jazzy rejects a non-zero final velocity unless told otherwise). The planned points
are followed by a braking tail to rest, so if the stream stops the arm stops inside the limits too.
Each point carries the filter's velocity at that point; the JTC's cubic through (position, velocity) points is
then exactly the filter's constant-acceleration motion between them, within every limit.

The braking tail is closed-form (a handful of knots instead of one filter step per period): each moving joint
decelerates at a constant ``a_j = |u_j| / T_j <= A`` where ``T_j = ceil(|u_j| / (A dt)) dt`` is its stop time
rounded up to the control grid, and there is a knot at every distinct ``T_j``. Between knots each joint is a
parabola or at rest, which the JTC's cubic Hermite reproduces exactly, so:

* acceleration ``<= a_j <= A`` everywhere on the tail; speed only decreases; the last point is exactly at
  rest;
* stop position ``q + u_j T_j / 2 <= q + u|u|/(2A) + u dt/2``: inside the filter's braking bound, hence
  inside the position limits (the filter's invariant);
* jerk: the acceleration jumps from the last step's ``α0`` to ``-a_j sign(u_j)``, then to 0. If any joint
  would jump by more than ``J`` (it was still accelerating hard, the filter's "ramp" case), one filter
  ``brake`` step is taken first; after it every joint's acceleration opposes its motion and all jumps are
  ``<= A <= J``;
* knot times are on the ``dt`` grid, so they are strictly increasing and at least ``dt`` apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from apt_policy.control.safety import CommandState, SafetyFilter


@dataclass(frozen=True, eq=False)
class Target:
    """What the filter should do for one future step: ``kind`` "position" (values = positions, velocity =
    feed-forward) or "velocity" (values = joint velocities). ``measured`` is unknown ahead of time: the
    previous planned command stands in for it."""

    kind: str
    values: np.ndarray
    velocity: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Trajectory:
    """times (N,) s from start; positions and velocities (N, dof) rad, rad/s."""

    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray

    def __len__(self) -> int:
        return int(self.times.shape[0])


def plan_lookahead(safety: SafetyFilter, first: CommandState, targets: Iterable[Target | None]) -> Trajectory:
    """Point 1 is ``first`` (the command of this tick) at ``dt``; then one filter step per target (None ->
    brake); then the closed-form braking tail to rest (see the module docstring). Returns plain arrays."""
    states = [first]
    for target in targets:
        prev = states[-1]
        if target is None:
            states.append(safety.brake(prev))
        elif target.kind == "velocity":
            states.append(safety.follow_velocity(prev, target.values, prev.positions)[0])
        else:
            states.append(safety.track(prev, target.values, prev.positions, target.velocity)[0])
    if needs_ramp_step(safety, states[-1]):
        states.append(safety.brake(states[-1]))
    dt = safety.dt
    times = dt * np.arange(1, len(states) + 1, dtype=np.float64)
    positions = np.stack([s.positions for s in states])
    velocities = np.stack([s.velocities for s in states])
    tail = braking_tail(safety, states[-1])
    if tail is None:
        return Trajectory(times=times, positions=positions, velocities=velocities)
    tail_times, tail_positions, tail_velocities = tail
    return Trajectory(
        times=np.concatenate([times, times[-1] + tail_times]),
        positions=np.concatenate([positions, tail_positions]),
        velocities=np.concatenate([velocities, tail_velocities]),
    )


def stop_steps(safety: SafetyFilter, velocities: np.ndarray) -> np.ndarray:
    """Per joint, the number of control periods a constant-deceleration stop from ``velocities`` takes:
    ``ceil(|u| / (A dt))`` (0 only for a joint exactly at rest). A quotient within 1e-9 above an integer
    (rounding of a speed reached in whole steps of ``A dt``) counts as that integer: the deceleration may
    then exceed ``A`` by 1e-9 relative, and the stop is not a period later than the filter's own braking."""
    speed = np.abs(velocities)
    steps = np.ceil(speed / safety.dv - 1e-9).astype(np.int64)
    return np.where(speed > 0, np.maximum(steps, 1), 0)


def needs_ramp_step(safety: SafetyFilter, state: CommandState) -> bool:
    """Whether jumping from the last acceleration to the tail's deceleration would exceed the jerk bound on
    some joint (then one filter ``brake`` step comes first)."""
    u, acc = state.velocities, state.acc
    steps = stop_steps(safety, u)
    moving = steps > 0
    decel = np.zeros_like(u)
    np.divide(u, steps * safety.dt, out=decel, where=moving)  # signed a_j, |a_j| <= A
    jump = np.where(moving, np.abs(acc + decel), np.abs(acc))
    return bool(np.any(jump > safety.j_step * (1 + 1e-9)))


def braking_tail(
    safety: SafetyFilter, state: CommandState
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Knots (times after ``state``, positions, velocities) of the constant-deceleration stop of every
    joint from ``state``, one knot per distinct stop time; None if ``state`` is already at rest."""
    q, u = state.positions, state.velocities
    steps = stop_steps(safety, u)
    if not steps.any():
        return None
    dt = safety.dt
    stop_t = steps * dt  # (dof,)
    moving = steps > 0
    decel = np.zeros_like(u)
    np.divide(u, stop_t, out=decel, where=moving)  # signed: u_j / T_j
    knots = np.unique(steps[moving]) * dt  # (K,) strictly increasing, >= dt
    tau = np.minimum(knots[:, None], stop_t[None, :])  # (K, dof) time each joint has moved
    positions = q + u * tau - 0.5 * decel * tau * tau
    velocities = np.where(tau >= stop_t, 0.0, u - decel * tau)
    positions = np.minimum(np.maximum(positions, safety.lower), safety.upper)  # rounding only
    return knots, positions, velocities
