"""The JTC look-ahead: the next few commands as one joint trajectory, every point produced by the filter.

The node sends it each tick with ``header.stamp = 0`` ("start now"). Contract (joint_trajectory_controller):
``time_from_start`` strictly increasing and > 0 for the first point (a first point at 0 is a jump); the last
point at rest (velocity 0: Jazzy rejects a non-zero final velocity unless told otherwise). The planned points
are followed by braking points until rest, so if the stream stops the arm stops inside the limits too.
Each point carries the filter's velocity at that point; the JTC's cubic through (position, velocity) points is
then exactly the filter's constant-acceleration motion between them, within every limit.
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


def plan_lookahead(
    safety: SafetyFilter, first: CommandState, targets: Iterable[Target | None], max_brake_steps: int = 10_000
) -> Trajectory:
    """Point 1 is ``first`` (the command of this tick) at ``dt``; then one filter step per target (None ->
    brake); then braking until rest. Returns plain arrays."""
    states = [first]
    for target in targets:
        prev = states[-1]
        if target is None:
            states.append(safety.brake(prev))
        elif target.kind == "velocity":
            states.append(safety.follow_velocity(prev, target.values, prev.positions)[0])
        else:
            states.append(safety.track(prev, target.values, prev.positions, target.velocity)[0])
    for _ in range(max_brake_steps):
        if not np.any(states[-1].velocities):
            break
        states.append(safety.brake(states[-1]))
    else:  # pragma: no cover - braking reaches rest in ceil(v_max / (a_max dt)) steps
        raise RuntimeError("look-ahead did not come to rest")
    positions = np.stack([s.positions for s in states])
    velocities = np.stack([s.velocities for s in states])
    times = safety.dt * np.arange(1, len(states) + 1, dtype=np.float64)
    return Trajectory(times=times, positions=positions, velocities=velocities)
