"""The scripted expert and closed-loop rollouts on the kinematic arm."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.robots.franka import FR3, forward_kinematics
from apt_policy.tasks.reaching import (
    BLOCK_SIZE,
    SUCCESS_RADIUS,
    ExpertConfig,
    KinematicArm,
    ReachingExpert,
    expert_policy,
    goal_configuration,
    make_instruction,
    rollout,
    sample_scene,
)

DT, H = 0.1, 16


def test_expert_rollouts_succeed_within_limits() -> None:
    n, successes = 60, 0
    for seed in range(n):
        scene = sample_scene(seed)
        color = scene.colors[seed % 3]
        result = rollout(
            expert_policy(scene, color, DT, H), scene, make_instruction(color), dt=DT, image_size=(32, 32)
        )
        successes += result.success
        assert result.violations.total == 0
        q = result.joint_positions
        vel = np.diff(q, axis=0) / DT
        acc = np.diff(vel, axis=0) / DT
        assert np.all(np.abs(vel) <= FR3.velocity + 1e-9)
        assert np.all(np.abs(acc) <= FR3.acceleration + 1e-6)
        # The hand never dips below the blocks' tops on the way.
        assert result.tcp_positions[:, 2].min() > BLOCK_SIZE
    assert successes / n >= 0.98


def test_expert_chunk_is_smooth_and_converges_to_the_ik_goal() -> None:
    scene = sample_scene(1)
    goal = goal_configuration(scene.block("blue"))
    tcp = forward_kinematics(goal)
    np.testing.assert_allclose(tcp[:3, 3], scene.block("blue").reach_point, atol=1e-3)
    config = ExpertConfig()
    expert = ReachingExpert(goal, DT, 64, config=config)
    chunk = expert.chunk(FR3.ready_pose)
    assert chunk.shape == (64, 7)
    np.testing.assert_allclose(chunk[-1], goal, atol=1e-3)
    path = np.vstack([FR3.ready_pose, chunk])
    vel = np.diff(path, axis=0) / DT
    assert np.all(np.abs(vel) <= FR3.velocity * config.velocity_fraction + 1e-9)
    acc = np.diff(np.vstack([np.zeros(7), vel]), axis=0) / DT
    assert np.all(np.abs(acc) <= FR3.acceleration * config.acceleration_fraction + 1e-9)


def test_holding_policy_fails_and_wrong_block_is_reported() -> None:
    scene = sample_scene(2)

    def hold(obs):
        return np.tile(obs.state, (H, 1))

    result = rollout(hold, scene, "reach the red block", dt=DT, max_steps=20, image_size=(32, 32))
    assert not result.success and result.final_distance > SUCCESS_RADIUS
    np.testing.assert_allclose(result.joint_positions[-1], FR3.ready_pose)

    to_green = expert_policy(scene, "green", DT, H)
    result = rollout(to_green, scene, "reach the red block", dt=DT, image_size=(32, 32))
    assert result.target == "red"
    assert not result.success
    assert result.reached == "green"


def test_rollout_counts_bad_commands_and_rejects_bad_chunks() -> None:
    scene = sample_scene(2)
    result = rollout(
        lambda obs: np.full((H, 8), np.nan), scene, "reach the blue block", max_steps=8, image_size=(32, 32)
    )
    assert result.violations.non_finite == 8
    np.testing.assert_allclose(result.joint_positions[-1], FR3.ready_pose)

    def jump(obs):
        target = obs.state[:7].astype(float).copy()
        target[0] += 1.0  # 10 rad/s at dt = 0.1
        return np.tile(target, (H, 1))

    result = rollout(jump, scene, "reach the blue block", max_steps=3, image_size=(32, 32))
    assert result.violations.too_fast == 3
    assert np.all(np.abs(np.diff(result.joint_positions, axis=0)) <= FR3.velocity * DT + 1e-12)

    with pytest.raises(ValueError, match="chunk of shape"):
        rollout(lambda obs: np.zeros(7), scene, "reach the blue block", max_steps=3, image_size=(32, 32))
    with pytest.raises(ValueError, match="no target colour"):
        rollout(lambda obs: np.zeros((H, 8)), scene, "reach something", max_steps=3)


def test_rollout_records_frames_per_query() -> None:
    scene = sample_scene(4)
    result = rollout(
        expert_policy(scene, "red", DT, H),
        scene,
        "reach the red block",
        cameras=("front", "side"),
        image_size=(24, 32),
        actions_per_chunk=4,
        max_steps=12,
        record_frames=True,
    )
    assert result.queries == 3 and len(result.frames) == 3
    assert result.frames[0]["side"].shape == (24, 32, 3)
    assert np.any(result.frames[0]["front"] != result.frames[-1]["front"])


def test_kinematic_arm_clips_targets_outside_limits() -> None:
    arm = KinematicArm(dt=DT)
    target = FR3.ready_pose.copy()
    target[3] = 0.5  # joint 4 upper limit is -0.1518
    for _ in range(40):
        arm.command(target)
    assert arm.violations.outside_limits == 40
    assert FR3.within_limits(arm.q)
    assert arm.q[3] == pytest.approx(FR3.position_upper[3])
