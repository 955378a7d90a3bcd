"""Chunk schedule on a simulated clock: latency compensation, refusals, blending modes, action semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from apt_policy.control.blending import BlendConfig, ensemble_weights
from apt_policy.control.schedule import Chunk, ChunkSchedule
from apt_policy.control.semantics import ActionLayout
from apt_policy.core.config import ActionSemantics

DOF = 2
DT = 0.1


def ramp_chunk(t_obs: float, epoch: int = 1, horizon: int = 10, offset: float = 0.0, **kw) -> Chunk:
    """Action i = (offset + i, -(offset + i)): the index is readable from the value."""
    i = np.arange(horizon, dtype=np.float64) + offset
    return Chunk(actions=np.stack([i, -i], axis=1), t_obs=t_obs, epoch=epoch, **kw)


def schedule(
    mode: str = "none", layout: ActionLayout | None = None, interpolation: str = "hold", **blend
) -> ChunkSchedule:
    """Zero-order hold by default, so values read back are the chunk's actions themselves."""
    layout = layout or ActionLayout(dof=DOF)
    return ChunkSchedule(layout, DT, BlendConfig(mode=mode, **blend), interpolation=interpolation)


def test_latency_compensation_skips_the_actions_whose_time_passed() -> None:
    s = schedule()
    # observation at t=10.0, inference took 0.23 s: steps 0 and 1 (10.0, 10.1) are gone, 10.2 is step 2
    assert s.push(ramp_chunk(10.0), t_now=10.23, epoch=1).accepted
    a = s.sample(10.23)
    assert a is not None and a.index == 2 and a.arm[0] == 2.0 and a.arm[1] == -2.0
    assert s.actions_left(10.23) == 8
    # exactly on step boundaries despite float rounding: 10.0 + 0.3 -> step 3
    assert s.sample(10.0 + 3 * DT).index == 3
    assert s.sample(10.0 + 3 * DT - 1e-6).index == 2
    assert s.sample(10.99).index == 9 and s.actions_left(10.99) == 1
    assert s.sample(11.0) is None and s.actions_left(11.0) == 0


def test_linear_interpolation_between_actions_with_matching_feed_forward() -> None:
    s = schedule(interpolation="linear")
    actions = np.array([[0.0, 0.0], [1.0, -2.0], [1.5, -2.0]])
    s.push(Chunk(actions, 10.0, 1), t_now=10.0, epoch=1)
    for t, expected, velocity in [
        (10.0, [0.0, 0.0], [10.0, -20.0]),
        (10.025, [0.25, -0.5], [10.0, -20.0]),
        (10.1, [1.0, -2.0], [5.0, 0.0]),  # at a step instant the target IS the action (floor index)
        (10.15, [1.25, -2.0], [5.0, 0.0]),
        (10.25, [1.5, -2.0], [0.0, 0.0]),  # last action is held
    ]:
        a = s.sample(t)
        np.testing.assert_allclose(a.arm, expected, atol=1e-12, err_msg=str(t))
        np.testing.assert_allclose(a.arm_velocity, velocity, atol=1e-9, err_msg=str(t))
    hold = schedule(interpolation="hold")
    hold.push(Chunk(actions, 10.0, 1), t_now=10.0, epoch=1)
    np.testing.assert_allclose(hold.sample(10.05).arm, [0.0, 0.0])
    np.testing.assert_allclose(hold.sample(10.05).arm_velocity, 0.0)  # no feed-forward with a hold


def test_cubic_interpolation_passes_through_the_actions_with_continuous_velocity() -> None:
    s = schedule(interpolation="cubic")
    times = 0.1 * np.arange(12)
    wave = 0.3 * np.sin(2.0 * times)  # a smooth motion sampled by the policy every 0.1 s
    s.push(Chunk(np.stack([wave, -wave], axis=1), 0.0, 1), t_now=0.0, epoch=1)
    for i in range(1, 11):  # at every action instant: the action itself, and the same velocity either side
        np.testing.assert_allclose(s.sample(0.1 * i).arm, [wave[i], -wave[i]], atol=1e-12)
        before, after = s.sample(0.1 * i - 1e-7).arm_velocity, s.sample(0.1 * i + 1e-7).arm_velocity
        np.testing.assert_allclose(before, after, atol=1e-4)
    fine = np.arange(0.1, 1.0, 0.005)
    values = np.array([s.sample(t).arm[0] for t in fine])
    np.testing.assert_allclose(values, 0.3 * np.sin(2.0 * fine), atol=2e-3)  # close to the motion itself
    accel = np.diff([s.sample(t).arm_velocity[0] for t in fine]) / 0.005
    assert np.max(np.abs(accel)) < 2.0  # true peak 1.2 rad/s²; linear segments would ask for ~infinity
    with pytest.raises(ValueError, match="interpolation"):
        ChunkSchedule(ActionLayout(dof=DOF), DT, interpolation="spline")


def test_should_request_when_the_configured_number_of_actions_is_left() -> None:
    s = schedule()
    assert s.should_request(0.0, when_left=3)  # nothing buffered
    s.push(ramp_chunk(0.0), t_now=0.05, epoch=1)
    assert not s.should_request(0.65, when_left=3)  # step 6: 4 left
    assert s.should_request(0.7, when_left=3)  # step 7: 3 left


@pytest.mark.parametrize(
    ("chunk", "t_now", "reason"),
    [
        (ramp_chunk(0.0, epoch=0), 0.1, "stale instruction epoch"),
        (ramp_chunk(0.5), 0.1, "in the future"),
        (ramp_chunk(0.0), 1.0, "already in the past"),
        (Chunk(np.full((10, DOF), np.nan), 0.0, 1), 0.1, "NaN"),
        (Chunk(np.zeros((10, 1)), 0.0, 1), 0.1, "columns"),
        (Chunk(np.zeros(10), 0.0, 1), 0.1, "horizon"),
        (ramp_chunk(math.nan), 0.1, "not finite"),
        (ramp_chunk(0.0, dt=0.0), 0.1, "dt"),
    ],
)
def test_bad_chunks_are_refused_with_a_reason(chunk: Chunk, t_now: float, reason: str) -> None:
    s = schedule()
    decision = s.push(chunk, t_now=t_now, epoch=1)
    assert not decision.accepted and reason in decision.reason
    assert s.sample(t_now) is None


def test_an_older_chunk_does_not_replace_the_executing_one() -> None:
    s = schedule()
    assert s.push(ramp_chunk(1.0, chunk_id=2), t_now=1.1, epoch=1).accepted
    decision = s.push(ramp_chunk(0.9, chunk_id=1), t_now=1.15, epoch=1)
    assert not decision.accepted and "older" in decision.reason
    assert s.sample(1.15).chunk_id == 2


def test_blend_none_switches_at_once() -> None:
    s = schedule("none")
    s.push(ramp_chunk(0.0), t_now=0.0, epoch=1)
    s.push(ramp_chunk(0.3, offset=100.0), t_now=0.35, epoch=1)
    a = s.sample(0.35)
    assert a.arm[0] == 100.0 and a.contributors == 1  # new chunk step 0


def test_crossfade_moves_linearly_from_old_to_new_over_k_steps() -> None:
    s = schedule("crossfade", crossfade_steps=2)
    s.push(ramp_chunk(0.0), t_now=0.0, epoch=1)
    s.push(ramp_chunk(0.3, offset=100.0), t_now=0.3, epoch=1)
    for t, alpha in [(0.3, 0.0), (0.35, 0.25), (0.4, 0.5), (0.45, 0.75), (0.5, 1.0), (0.6, 1.0)]:
        old = math.floor(round(t / DT, 9))  # old chunk's step at t
        new = 100.0 + math.floor(round((t - 0.3) / DT, 9))
        expected = (1 - alpha) * old + alpha * new
        a = s.sample(t)
        assert a.arm[0] == pytest.approx(expected), t
        assert a.arm[1] == pytest.approx(-expected), t
    assert s.sample(0.6).contributors == 1  # the old chunk no longer weighs in


def test_smoothstep_crossfade_starts_and_ends_without_a_velocity_step() -> None:
    """As above with crossfade_shape smoothstep: weights 3a^2 - 2a^3 of the linear a, so the target's velocity
    is continuous at both ends of the blend (the linear fade jumps by (new - old) / duration)."""
    s = schedule("crossfade", crossfade_steps=2, crossfade_shape="smoothstep")
    s.push(ramp_chunk(0.0), t_now=0.0, epoch=1)
    s.push(ramp_chunk(0.3, offset=100.0), t_now=0.3, epoch=1)
    for t, a in [(0.3, 0.0), (0.35, 0.25), (0.4, 0.5), (0.45, 0.75), (0.5, 1.0)]:
        alpha = a * a * (3 - 2 * a)
        old = math.floor(round(t / DT, 9))
        new = 100.0 + math.floor(round((t - 0.3) / DT, 9))
        assert s.sample(t).arm[0] == pytest.approx((1 - alpha) * old + alpha * new), t
    h = 1e-4  # one-sided target velocities at the blend's start (0.3 s), constant chunks on either side
    steps = {}
    for shape in ("smoothstep", "linear"):
        sched = schedule("crossfade", crossfade_steps=2, crossfade_shape=shape)
        sched.push(Chunk(actions=np.zeros((30, 2)), t_obs=0.0, epoch=1), t_now=0.0, epoch=1)
        sched.push(Chunk(actions=np.ones((30, 2)), t_obs=0.3, epoch=1), t_now=0.3, epoch=1)
        before = (sched.sample(0.3).arm[0] - sched.sample(0.3 - h).arm[0]) / h
        after = (sched.sample(0.3 + h).arm[0] - sched.sample(0.3).arm[0]) / h
        steps[shape] = after - before
    assert steps["linear"] == pytest.approx(1 / (2 * DT), rel=1e-2)  # (new - old) / blend duration
    assert abs(steps["smoothstep"]) < 1e-2 * steps["linear"]
    with pytest.raises(ValueError, match="crossfade shape"):
        BlendConfig(crossfade_shape="cosine")


def test_a_crossfade_ends_by_the_old_chunks_last_action() -> None:
    """A chunk arriving 1.5 steps before the old chunk's last action: the 3-step blend is shortened to end
    there, so the target does not jump when the old chunk runs out mid-blend."""
    for shape in ("linear", "smoothstep"):
        s = schedule("crossfade", crossfade_steps=3, crossfade_shape=shape, interpolation="linear")
        s.push(ramp_chunk(0.0), t_now=0.0, epoch=1)  # last action (index 9) at 0.9 s
        s.push(ramp_chunk(0.75, offset=100.0), t_now=0.75, epoch=1)
        assert s.sample(0.75, prune=False).arm[0] == pytest.approx(7.5)  # the old chunk's target at first
        assert s.sample(0.9, prune=False).arm[0] == pytest.approx(101.5)  # all new by the old's last action
        times = np.arange(0.75, 1.2, 0.001)
        values = np.array([s.sample(float(t), prune=False).arm[0] for t in times])
        assert np.abs(np.diff(values)).max() < 2.0, shape  # ~94 over 0.15 s: no step at the old chunk's end


def test_ensemble_uses_act_weights_oldest_first() -> None:
    m = 0.5
    s = schedule("ensemble", ensemble_decay=m)
    for k in range(3):  # three overlapping chunks, values offset by 10 k
        s.push(ramp_chunk(0.1 * k, offset=10.0 * k), t_now=0.1 * k, epoch=1)
    t = 0.25  # chunk 0 step 2 (=2), chunk 1 step 1 (=11), chunk 2 step 0 (=20)
    w = np.exp(-m * np.arange(3))
    expected = float(np.dot(w / w.sum(), [2.0, 11.0, 20.0]))
    a = s.sample(t)
    assert a.contributors == 3
    assert a.arm[0] == pytest.approx(expected)
    np.testing.assert_allclose(ensemble_weights(3, 0.0), [1 / 3] * 3)
    assert ensemble_weights(2, m)[0] > ensemble_weights(2, m)[1]  # the oldest weighs most (ACT)


def test_averaging_two_modes_gives_an_action_neither_chunk_proposed() -> None:
    """The documented failure mode: left (+1) and right (-1) around an obstacle average to 0."""
    s = schedule("ensemble", ensemble_decay=0.0)
    s.push(Chunk(np.tile([1.0, 0.0], (10, 1)), 0.0, 1), t_now=0.0, epoch=1)
    s.push(Chunk(np.tile([-1.0, 0.0], (10, 1)), 0.1, 1), t_now=0.1, epoch=1)
    assert s.sample(0.15).arm[0] == pytest.approx(0.0)
    s_none = schedule("none")
    s_none.push(Chunk(np.tile([1.0, 0.0], (10, 1)), 0.0, 1), t_now=0.0, epoch=1)
    s_none.push(Chunk(np.tile([-1.0, 0.0], (10, 1)), 0.1, 1), t_now=0.1, epoch=1)
    assert s_none.sample(0.15).arm[0] == -1.0


def test_delta_semantics_are_relative_to_the_state_at_observation() -> None:
    layout = ActionLayout(dof=DOF, arm="delta", arm_scale=0.5)
    s = schedule(layout=layout, interpolation="linear")
    q_obs = np.array([1.0, 2.0])
    s.push(ramp_chunk(0.0, state=q_obs), t_now=0.0, epoch=1)
    np.testing.assert_allclose(s.sample(0.2).arm, q_obs + 0.5 * np.array([2.0, -2.0]))
    # feed-forward velocity of the target within the chunk: 0.5 rad per 0.1 s step
    np.testing.assert_allclose(s.sample(0.2).arm_velocity, [5.0, -5.0])
    missing = schedule(layout=layout).push(ramp_chunk(0.0), t_now=0.0, epoch=1)
    assert not missing.accepted and "state" in missing.reason


def test_velocity_semantics_scale_and_gripper_modes() -> None:
    layout = ActionLayout(dof=DOF, arm="velocity", arm_scale=0.2, gripper="binary")
    s = schedule(layout=layout, interpolation="cubic")  # ignored: velocities are held
    actions = np.array([[1.0, -1.0, 0.9], [0.5, 0.0, 0.1]])
    s.push(Chunk(actions, 0.0, 1), t_now=0.0, epoch=1)
    a = s.sample(0.0)
    np.testing.assert_allclose(a.arm, [0.2, -0.2])  # rad/s
    np.testing.assert_allclose(a.arm_velocity, 0.0)
    assert layout.gripper_width(a.gripper) == layout.open_width
    assert layout.gripper_width(s.sample(0.1).gripper) == layout.closed_width
    flipped = ActionLayout(dof=DOF, gripper="binary", binary_high_is_open=False)
    assert flipped.gripper_width(0.9) == flipped.closed_width
    absolute = ActionLayout(dof=DOF, gripper="absolute")
    assert absolute.gripper_width(0.03) == 0.03 and absolute.gripper_width(5.0) == absolute.max_width
    assert absolute.gripper_width(math.nan) is None
    assert ActionLayout(dof=DOF).gripper_width(0.5) is None  # gripper "none"


def test_layout_from_the_bundle_config() -> None:
    layout = ActionLayout.from_config(ActionSemantics(arm="delta", arm_scale=0.05, gripper="binary"), dof=7)
    assert (layout.arm, layout.arm_scale, layout.gripper, layout.gripper_column) == (
        "delta",
        0.05,
        "binary",
        7,
    )
    assert layout.min_action_dim == 8
    with pytest.raises(ValueError, match="arm action semantics"):
        ActionLayout.from_config({"arm": "torque"}, dof=7)
