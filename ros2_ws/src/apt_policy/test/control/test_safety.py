"""Safety filter: the guarantees under random and adversarial targets, and what each clamp reports."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.control.limits import JointLimits
from apt_policy.control.safety import (
    ACCELERATION,
    BRAKING,
    DEVIATION,
    NONFINITE,
    POSITION,
    VELOCITY,
    CommandState,
    SafetyConfig,
    SafetyFilter,
)
from apt_policy.robots.franka import get_profile

TOL = 1e-9


def make_filter(robot: str = "fr3", dt: float = 0.01, **config) -> SafetyFilter:
    return SafetyFilter(JointLimits.from_profile(get_profile(robot)), SafetyConfig(**config), dt)


def assert_step_safe(f: SafetyFilter, prev: CommandState, new: CommandState) -> None:
    q0, u0, q1, u1 = prev.positions, prev.velocities, new.positions, new.velocities
    assert np.all(np.isfinite(q1)) and np.all(np.isfinite(u1))
    assert np.all(q1 >= f.lower - TOL) and np.all(q1 <= f.upper + TOL)
    assert np.all(np.abs(u1) <= f.v_max + TOL)
    assert np.all(np.abs(q1 - q0) <= f.v_max * f.dt + TOL)  # |dq| <= v_max dt
    np.testing.assert_allclose(q1, q0 + 0.5 * f.dt * (u0 + u1), atol=1e-12)  # constant acceleration
    assert np.all(np.abs(u1 - u0) <= f.a_max * f.dt + 1e-9)  # |ddq| <= a_max (dt per tick), vs the command
    np.testing.assert_allclose(new.accelerations, (u1 - u0) / f.dt, atol=1e-9)
    assert np.all(np.abs(new.accelerations - prev.accelerations) <= f.j_step + 1e-6)  # jump of ddq (jerk)
    assert f.is_safe(new, tol=1e-9)  # can still stop inside the limits


def brake_to_rest(f: SafetyFilter, state: CommandState) -> CommandState:
    for _ in range(10_000):
        if not np.any(state.velocities):
            return state
        nxt = f.brake(state)
        assert_step_safe(f, state, nxt)
        full, _ = f.follow_velocity(state, np.zeros(f.dof))  # the fast brake is the full filter's brake
        np.testing.assert_array_equal(nxt.positions, full.positions)
        np.testing.assert_array_equal(nxt.velocities, full.velocities)
        state = nxt
    raise AssertionError("did not come to rest")


def adversarial_target(rng: np.random.Generator, f: SafetyFilter, q: np.ndarray) -> np.ndarray:
    """One of: NaN/inf, huge jumps, limit-hugging or beyond, small random walk, exactly at a limit."""
    kind = rng.integers(7)
    if kind == 0:
        t = q + rng.normal(0, 0.05, f.dof)
        t[rng.integers(f.dof)] = rng.choice([np.nan, np.inf, -np.inf])
        return t
    if kind == 1:
        return rng.uniform(-1e6, 1e6, f.dof)
    if kind == 2:  # just outside / at the hardware limits
        side = rng.integers(2, size=f.dof).astype(bool)
        return np.where(side, f.limits.upper, f.limits.lower) + rng.normal(0, 0.01, f.dof)
    if kind == 3:  # alternate between opposite limits to provoke maximal accelerations
        return np.where(rng.integers(2, size=f.dof).astype(bool), f.upper, f.lower)
    if kind == 4:
        return q + rng.normal(0, 0.02, f.dof)
    if kind == 5:
        return rng.uniform(f.limits.lower - 1, f.limits.upper + 1)
    return np.where(rng.integers(2, size=f.dof).astype(bool), f.upper - 1e-4, f.lower + 1e-4)


@pytest.mark.parametrize("robot", ["fr3", "panda"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_adversarial_targets_keep_every_guarantee(robot: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    f = make_filter(robot, dt=float(rng.choice([0.002, 0.01, 0.02])), max_deviation=np.inf)
    profile = get_profile(robot)
    state = f.start_state(profile.ready_pose)
    target = state.positions
    counts: dict[str, int] = {}
    for step in range(1500):
        if step % int(rng.integers(1, 40)) == 0:
            target = adversarial_target(rng, f, state.positions)
        measured = state.positions + rng.normal(0, 0.01, f.dof) if rng.random() < 0.5 else None
        ff = rng.normal(0, 3, f.dof) if rng.random() < 0.3 else None
        new, notes = f.track(state, target, measured, ff)
        assert_step_safe(f, state, new)
        for limit in notes.by_limit:
            counts[limit] = counts.get(limit, 0) + 1
        state = new
        if step % 300 == 150:  # from anywhere reached, braking ends at rest inside the limits
            brake_to_rest(f, state)
    # the adversary really pushed on every limit
    for limit in (NONFINITE, POSITION, VELOCITY, ACCELERATION, BRAKING):
        assert counts.get(limit, 0) > 0, (limit, counts)


@pytest.mark.parametrize("seed", [3, 4])
def test_random_velocity_commands_keep_every_guarantee(seed: int) -> None:
    rng = np.random.default_rng(seed)
    f = make_filter("fr3", dt=0.01)
    state = f.start_state(get_profile("fr3").ready_pose)
    v = np.zeros(f.dof)
    for step in range(1500):
        if step % 25 == 0:
            v = rng.normal(0, 4, f.dof)
            if rng.random() < 0.1:
                v[0] = np.nan
        measured = state.positions + rng.normal(0, 0.3, f.dof) if rng.random() < 0.3 else None
        new, _ = f.follow_velocity(state, v, measured)
        assert_step_safe(f, state, new)
        state = new


def test_full_speed_towards_a_limit_brakes_in_time_and_parks_on_it() -> None:
    f = make_filter("fr3", dt=0.01)
    state = f.start_state(get_profile("fr3").ready_pose)
    push = np.zeros(f.dof)
    push[0] = 100.0  # velocity command far above v_max, straight at joint 1's upper limit
    braking_seen = False
    for _ in range(1000):
        new, notes = f.follow_velocity(state, push)
        assert_step_safe(f, state, new)
        braking_seen |= 0 in notes.by_limit.get(BRAKING, ())
        state = new
    assert braking_seen
    assert state.positions[0] == pytest.approx(f.upper[0], abs=1e-6)  # parked on the limit minus margin
    assert state.velocities[0] == pytest.approx(0.0, abs=1e-9)


def test_clamped_target_is_approached_without_overshoot() -> None:
    f = make_filter("fr3", dt=0.01)
    state = f.start_state(get_profile("fr3").ready_pose)
    beyond = state.positions.copy()
    beyond[0] = 100.0
    for _ in range(1000):
        new, notes = f.track(state, beyond, target_velocity=np.full(f.dof, 50.0))
        assert_step_safe(f, state, new)
        assert notes.by_limit[POSITION] == (0,)
        state = new
    assert state.positions[0] == pytest.approx(f.upper[0], abs=1e-6)


def test_nan_target_brakes_and_is_reported() -> None:
    f = make_filter()
    q = get_profile("fr3").ready_pose
    state = CommandState(q.copy(), np.full(f.dof, 0.3))
    target = q.copy()
    target[2] = np.nan
    new, notes = f.track(state, target)
    assert notes.by_limit[NONFINITE] == tuple(range(f.dof))
    np.testing.assert_allclose(new.velocities, 0.3 - f.a_max * f.dt)  # braking at a_max, no jump


def test_each_clamp_names_the_joint_it_changed() -> None:
    f = make_filter(max_deviation=0.1)
    q = get_profile("fr3").ready_pose
    rest = CommandState(q.copy(), np.zeros(f.dof))
    target = q.copy()
    target[1] = f.limits.upper[1] + 1.0  # beyond the limit -> position (and deviation from measured)
    _, notes = f.track(rest, target, measured=q)
    assert notes.by_limit[DEVIATION] == (1,)
    target = q.copy()
    target[3] = f.upper[3] + 0.5
    _, notes = f.track(rest, target)
    assert notes.by_limit[POSITION] == (3,)
    # already at v_max and asked for more: velocity limit binds
    fast = CommandState(q.copy(), f.v_max.copy() * np.eye(f.dof)[4])
    target = q.copy()
    target[4] += 0.2
    _, notes = f.track(fast, target, target_velocity=10 * np.eye(f.dof)[4])
    assert notes.by_limit[VELOCITY] == (4,)
    # at rest, a 0.2 rad step wants more than a_max dt of speed at once: acceleration binds
    target = q.copy()
    target[5] += 0.2
    new, notes = f.track(rest, target)
    assert notes.by_limit[ACCELERATION] == (5,)
    assert new.velocities[5] == pytest.approx(f.a_max[5] * f.dt)


def test_tracks_a_reachable_target_exactly_without_overshoot() -> None:
    f = make_filter(max_deviation=np.inf)
    q = get_profile("fr3").ready_pose
    state = f.start_state(q)
    target = q + 0.3
    overshoot = 0.0
    for _ in range(400):
        state, _ = f.track(state, target)
        overshoot = max(overshoot, float(np.max(state.positions - target)))
    np.testing.assert_allclose(state.positions, target, atol=1e-9)
    np.testing.assert_allclose(state.velocities, 0.0, atol=1e-9)
    assert overshoot <= 1e-9


def test_start_state_refuses_a_pose_outside_the_safe_range() -> None:
    f = make_filter(margin=0.05)
    q = get_profile("fr3").ready_pose.copy()
    q[3] = f.limits.upper[3] - 0.01  # inside the hardware range but inside the margin
    assert "fr3_joint4" in (f.check_start(q) or "")
    with pytest.raises(ValueError, match="fr3_joint4"):
        f.start_state(q)
    assert "NaN" in (f.check_start(np.full(7, np.nan)) or "")
    assert "expected 7" in (f.check_start(np.zeros(6)) or "")


def test_limits_from_profile_scale_and_refuse_widening() -> None:
    profile = get_profile("panda")
    limits = JointLimits.from_profile(profile, velocity_scale=0.5, acceleration=5.0)
    np.testing.assert_allclose(limits.velocity, profile.velocity * 0.5)
    np.testing.assert_allclose(limits.acceleration, 5.0)
    with pytest.raises(ValueError, match="exceed"):
        JointLimits.from_profile(profile, velocity=10.0)
    with pytest.raises(ValueError):
        SafetyFilter(limits, SafetyConfig(margin=2.0))  # margin eats the whole range
