"""The look-ahead's closed-form braking tail: exact JTC path within every limit, few knots, at rest."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.control.limits import JointLimits
from apt_policy.control.lookahead import Target, braking_tail, needs_ramp_step, plan_lookahead
from apt_policy.control.safety import CommandState, SafetyConfig, SafetyFilter
from apt_policy.robots.franka import get_profile

PROFILE = get_profile("fr3")
LIMITS = JointLimits.from_profile(PROFILE)


def hermite(traj, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The JTC's cubic between consecutive points at fraction ``s``: positions, velocities, accelerations."""
    h = np.diff(traj.times)[:, None]
    p0, p1 = traj.positions[:-1], traj.positions[1:]
    m0, m1 = traj.velocities[:-1] * h, traj.velocities[1:] * h
    pos = (2 * s**3 - 3 * s**2 + 1) * p0 + (s**3 - 2 * s**2 + s) * m0 + (3 * s**2 - 2 * s**3) * p1
    pos = pos + (s**3 - s**2) * m1
    vel = ((6 * s**2 - 6 * s) * (p0 - p1) + (3 * s**2 - 4 * s + 1) * m0 + (3 * s**2 - 2 * s) * m1) / h
    acc = ((12 * s - 6) * (p0 - p1) + (6 * s - 4) * m0 + (6 * s - 2) * m1) / h**2
    return pos, vel, acc


def assert_tail_safe(f: SafetyFilter, state: CommandState, traj) -> None:
    tol = 1e-6 * (1 + f.a_max)
    assert traj.times[0] == pytest.approx(f.dt) and np.all(np.diff(traj.times) >= f.dt * (1 - 1e-9))
    np.testing.assert_array_equal(traj.velocities[-1], 0.0)
    np.testing.assert_allclose(traj.positions[0], state.positions)
    for s in np.linspace(0.0, 1.0, 21):
        pos, vel, acc = hermite(traj, s)
        assert np.all(pos >= f.lower - 1e-9) and np.all(pos <= f.upper + 1e-9)
        assert np.all(np.abs(vel) <= f.v_max + 1e-9)
        assert np.all(np.abs(acc) <= f.a_max + tol)
    _, _, acc_start = hermite(traj, 0.0)
    _, _, acc_end = hermite(traj, 1.0)
    jumps = np.concatenate([acc_start[:1] - state.accelerations, acc_start[1:] - acc_end[:-1], acc_end[-1:]])
    assert np.all(np.abs(jumps) <= f.j_step + tol), np.abs(jumps).max(axis=0) / f.j_step
    speeds = np.abs(traj.velocities)
    assert np.all(np.diff(speeds, axis=0) <= 1e-12)  # braking never speeds a joint up


def random_safe_states(f: SafetyFilter, rng: np.random.Generator, count: int) -> list[CommandState]:
    """States the filter reaches while tracking wild targets: moving fast, accelerating, near the limits."""
    state = f.start_state(PROFILE.ready_pose)
    out = []
    for k in range(count * 5):
        if k % 15 == 0:
            goal = rng.uniform(LIMITS.lower - 0.3, LIMITS.upper + 0.3)
        state = f.track(state, goal)[0]
        if k % 5 == 4:
            out.append(state)
    return out


@pytest.mark.parametrize("dt", [0.005, 0.01, 0.002])
def test_braking_tail_from_reachable_states_is_within_every_limit(dt: float) -> None:
    f = SafetyFilter(LIMITS, SafetyConfig(max_deviation=np.inf), dt=dt)
    rng = np.random.default_rng(int(dt * 1e4))
    ramps = 0
    for state in random_safe_states(f, rng, 150):
        assert f.is_safe(state)
        ramps += needs_ramp_step(f, state)
        traj = plan_lookahead(f, state, [])
        assert_tail_safe(f, state, traj)
        assert len(traj) <= 2 + LIMITS.dof  # the state, maybe a ramp step, one knot per distinct stop time
        # stops at most half a period at the braking speed beyond the filter's own step-by-step braking
        stepwise = state
        while np.any(stepwise.velocities):
            stepwise = f.brake(stepwise)
        moved, stepwise_moved = traj.positions[-1] - state.positions, stepwise.positions - state.positions
        assert np.all(moved * np.sign(state.velocities) >= -1e-12)
        brake_from = traj.velocities[1] if needs_ramp_step(f, state) else state.velocities
        slack = np.abs(brake_from) * dt / 2
        assert np.all(np.abs(moved) <= np.abs(stepwise_moved) + slack + 1e-12)
    assert ramps > 0  # the jerk-bound ramp step was exercised


def test_tail_is_a_constant_deceleration_with_knots_at_each_stop_time() -> None:
    f = SafetyFilter(LIMITS, dt=0.01)
    u = np.zeros(LIMITS.dof)
    u[0], u[1], u[2] = 0.5 * f.v_max[0], -0.5 * f.v_max[1], 0.5 * f.v_max[0]  # joints 0 and 2 stop together
    q = PROFILE.ready_pose.copy()
    times, positions, velocities = braking_tail(f, CommandState(q, u))
    steps = np.ceil(np.abs(u) / f.dv).astype(int)
    np.testing.assert_allclose(times, np.unique(steps[steps > 0]) * f.dt)
    stop_t = steps * f.dt
    for j in (0, 1, 2):
        a = u[j] / stop_t[j]
        assert abs(a) <= f.a_max[j] * (1 + 1e-12)
        tau = np.minimum(times, stop_t[j])
        np.testing.assert_allclose(positions[:, j], q[j] + u[j] * tau - 0.5 * a * tau**2, atol=1e-12)
    np.testing.assert_array_equal(positions[:, 3:], np.tile(q[3:], (len(times), 1)))
    np.testing.assert_array_equal(velocities[-1], 0.0)
    assert braking_tail(f, CommandState(q, np.zeros(LIMITS.dof))) is None


def test_accelerating_hard_takes_one_filter_brake_step_first() -> None:
    f = SafetyFilter(LIMITS, dt=0.01)
    assert np.all(f.j_step - f.a_max < f.a_max)  # fr3: the jerk bound matters
    u = np.full(LIMITS.dof, 0.3)
    state = CommandState(PROFILE.ready_pose.copy(), u, f.a_max.copy())  # still accelerating at A
    assert needs_ramp_step(f, state)
    traj = plan_lookahead(f, state, [])
    np.testing.assert_allclose(traj.positions[1], f.brake(state).positions)
    assert traj.times[1] == pytest.approx(2 * f.dt)
    assert_tail_safe(f, state, traj)


def test_at_rest_the_trajectory_is_the_planned_points_only() -> None:
    f = SafetyFilter(LIMITS, dt=0.01)
    state = f.start_state(PROFILE.ready_pose)
    traj = plan_lookahead(f, state, [Target("position", PROFILE.ready_pose.copy())] * 3)
    assert len(traj) == 4
    np.testing.assert_allclose(traj.times, 0.01 * np.arange(1, 5))
    np.testing.assert_array_equal(traj.velocities, 0.0)


def test_rounding_dust_velocities_still_end_exactly_at_rest() -> None:
    f = SafetyFilter(LIMITS, dt=0.01)
    u = np.full(LIMITS.dof, -4.163336e-17)
    traj = plan_lookahead(f, CommandState(PROFILE.ready_pose.copy(), u), [])
    assert len(traj) == 2 and traj.times[1] == pytest.approx(0.02)
    np.testing.assert_array_equal(traj.velocities[-1], 0.0)
