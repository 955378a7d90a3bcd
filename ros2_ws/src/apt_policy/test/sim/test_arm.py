"""SimArm: joint_trajectory_controller semantics, forward position commands, limits, violations."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from apt_policy.robots.franka import FR3
from apt_policy.sim.arm import ArrivalLog, SimArm

NAMES = list(FR3.joint_names)
DT = 1e-3
READY = FR3.ready_pose


def run(arm: SimArm, t0: float, duration: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Step the arm at 1 kHz; returns the end time and the measured positions/velocities."""
    n = round(duration / DT)
    qs, vs = np.empty((n, 7)), np.empty((n, 7))
    t = t0
    for i in range(n):
        t += DT
        arm.step(t, DT)
        qs[i], vs[i], _ = arm.state()
    return t, qs, vs


def target(offset: float, joint: int = 0) -> np.ndarray:
    q = READY.copy()
    q[joint] += offset
    return q


def test_stamp_zero_trajectory_moves_the_arm_to_its_end_point() -> None:
    arm = SimArm()
    goal = target(0.4)
    assert arm.submit_trajectory(NAMES, [0.5, 1.0], [target(0.2), goal], None, stamp=0.0, now=10.0)
    desired, _ = arm.follower.desired(10.5)
    np.testing.assert_allclose(desired[0], target(0.2))  # linear from the desired state (ready)
    _, qs, vs = run(arm, 10.0, 1.5)
    np.testing.assert_allclose(qs[-1], goal, atol=1e-4)
    assert np.all(np.abs(vs) <= FR3.velocity + 1e-12)
    assert np.all(np.abs(np.diff(vs, axis=0)) / DT <= FR3.acceleration + 1e-6)
    assert sum(arm.violation_counts().values()) == 0


def test_joint_names_are_matched_in_any_order() -> None:
    perm = [3, 0, 6, 1, 5, 2, 4]
    goal = target(-0.3, joint=2)
    arm = SimArm()
    assert arm.submit_trajectory([NAMES[i] for i in perm], [1.0], [goal[perm]], None, 0.0, 0.0)
    _, qs, _ = run(arm, 0.0, 1.5)
    np.testing.assert_allclose(qs[-1], goal, atol=1e-4)


def test_cubic_interpolation_passes_knots_with_given_velocities() -> None:
    arm = SimArm()
    v_mid = np.zeros(7)
    v_mid[0] = 0.5
    arm.submit_trajectory(NAMES, [0.5, 1.0], [target(0.2), target(0.4)], [v_mid, np.zeros(7)], 0.0, 0.0)
    (q, v), _ = arm.follower.desired(0.5)
    np.testing.assert_allclose(q, target(0.2), atol=1e-12)
    np.testing.assert_allclose(v, v_mid, atol=1e-12)
    (q, v), _ = arm.follower.desired(0.25)
    # Hermite from (ready, v=0) to (0.2, v=0.5) over 0.5 s, at s = 0.5: 0.5*0.2 - 0.125*0.25 = 0.06875
    assert q[0] == pytest.approx(READY[0] + 0.06875)


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    [
        ({"times": [0.5, 0.5]}, "time_not_increasing"),
        ({"times": [1.0, 0.5]}, "time_not_increasing"),
        ({"names": NAMES[:6], "positions": [target(0.1)[:6], target(0.2)[:6]]}, "joint_names"),
        ({"names": [*NAMES[:6], "panda_joint7"]}, "joint_names"),
        ({"positions": [target(0.1), target(np.nan)]}, "non_finite"),
        ({"positions": [target(0.1), target(5.0)]}, "outside_limits"),
        ({"velocities": [np.zeros(7), np.full(7, 0.1)]}, "nonzero_end_velocity"),
        ({"stamp": 90.0}, "ends_in_past"),
        ({"positions": [target(0.1)]}, "malformed"),
        ({"times": [], "positions": []}, "malformed"),
    ],
)
def test_bad_trajectories_are_counted_and_ignored(kwargs: dict, kind: str) -> None:
    arm = SimArm()
    msg = {"names": NAMES, "times": [0.5, 1.0], "positions": [target(0.1), target(0.2)], "velocities": None}
    msg.update(kwargs)
    accepted = arm.submit_trajectory(
        msg["names"], msg["times"], msg["positions"], msg["velocities"], kwargs.get("stamp", 0.0), now=100.0
    )
    assert not accepted
    counts = arm.violation_counts()
    assert counts[kind] == 1 and sum(counts.values()) == 1
    _, qs, _ = run(arm, 100.0, 0.3)
    np.testing.assert_allclose(qs[-1], READY, atol=1e-12)


def test_nonzero_end_velocity_allowed_when_configured() -> None:
    arm = SimArm(allow_nonzero_velocity_at_trajectory_end=True)
    v = np.zeros(7)
    v[0] = 0.1
    assert arm.submit_trajectory(NAMES, [1.0], [target(0.1)], [v], 0.0, 0.0)


def test_new_trajectory_replaces_the_old_one_from_its_start_time() -> None:
    arm = SimArm()
    arm.submit_trajectory(NAMES, [2.0], [target(0.5)], None, 0.0, now=0.0)
    t, _, _ = run(arm, 0.0, 0.5)
    # B starts at t = 1.0 (stamped), reaches -0.2 one second later.
    assert arm.submit_trajectory(NAMES, [1.0], [target(-0.2)], None, stamp=1.0, now=t)
    t, _, _ = run(arm, t, 0.4)
    q_des, _ = arm.desired()
    assert q_des[0] == pytest.approx(READY[0] + 0.5 * t / 2.0, abs=1e-9)  # still A
    t, _, _ = run(arm, t, 0.1)  # t = 1.0: B takes over from A's desired state (0.25)
    t, _, _ = run(arm, t, 0.5)  # halfway through B
    q_des, _ = arm.desired()
    assert q_des[0] == pytest.approx(READY[0] + (0.25 - 0.2) / 2, abs=2e-3)
    _, qs, _ = run(arm, t, 1.0)
    np.testing.assert_allclose(qs[-1], target(-0.2), atol=1e-4)
    assert sum(arm.violation_counts().values()) == 0


def test_pending_trajectory_is_replaced_by_a_newer_one() -> None:
    arm = SimArm()
    arm.submit_trajectory(NAMES, [0.5], [target(0.3)], None, stamp=1.0, now=0.0)
    arm.submit_trajectory(NAMES, [0.5], [target(-0.3)], None, stamp=1.0, now=0.0)
    _, qs, _ = run(arm, 0.0, 2.5)
    np.testing.assert_allclose(qs[-1], target(-0.3), atol=1e-4)


def test_too_fast_segments_and_jumps_are_counted_and_tracking_saturates() -> None:
    arm = SimArm()
    assert arm.submit_trajectory(NAMES, [0.1], [target(1.0)], None, 0.0, 0.0)  # 10 rad/s
    assert arm.violation_counts()["too_fast"] == 1
    _, _, vs = run(arm, 0.0, 1.0)
    assert np.max(np.abs(vs[:, 0])) == pytest.approx(FR3.velocity[0])
    assert np.all(np.abs(vs) <= FR3.velocity + 1e-12)
    arm2 = SimArm()
    assert arm2.submit_trajectory(NAMES, [0.0, 0.5], [target(0.3), target(0.4)], None, 0.0, 0.0)  # jump
    assert arm2.violation_counts()["too_fast"] == 1


def test_forward_position_commands_hold_and_flag_jumps() -> None:
    arm = SimArm()
    t = 0.0
    for k in range(1, 51):  # 100 Hz stream, 0.5 rad/s on joint 1
        assert arm.submit_positions(target(0.005 * k), now=t)
        t, _, _ = run(arm, t, 0.01)
    assert arm.violation_counts()["too_fast"] == 0
    t, qs, _ = run(arm, t, 1.0)
    np.testing.assert_allclose(qs[-1], target(0.25), atol=1e-4)  # held, no timeout
    assert arm.submit_positions(target(0.8), now=t)  # 0.55 rad in the 0.1 s window: 5.5 rad/s
    assert arm.violation_counts()["too_fast"] == 1
    assert not arm.submit_positions([0.0] * 6, now=t)
    assert not arm.submit_positions(target(np.inf), now=t)
    assert not arm.submit_positions(target(4.0), now=t)
    counts = arm.violation_counts()
    assert (counts["malformed"], counts["non_finite"], counts["outside_limits"]) == (1, 1, 1)


def test_gripper_moves_at_limited_speed_and_clips() -> None:
    arm = SimArm(gripper_speed=0.1)
    assert arm.submit_gripper(0.02)
    run(arm, 0.0, 0.3)
    assert arm.state()[2] == pytest.approx(0.08 - 0.03, abs=1e-9)
    run(arm, 0.3, 0.5)
    assert arm.state()[2] == pytest.approx(0.02)
    assert arm.submit_gripper(0.5)
    assert arm.violation_counts()["gripper"] == 1
    assert arm.gripper_target == 0.08
    assert not arm.submit_gripper(float("nan"))


def test_violation_callback_and_arrival_stats() -> None:
    seen = []
    arm = SimArm(on_violation=lambda kind, msg: seen.append((kind, msg)))
    arm.submit_trajectory(NAMES, [1.0, 1.0], [READY, READY], None, 0.0, 0.0)
    assert seen and seen[0][0] == "time_not_increasing" and "strictly increase" in seen[0][1]
    log = ArrivalLog()
    for t in (0.0, 0.01, 0.02, 0.04):
        log.add(t)
    stats = log.stats()
    assert stats["count"] == 4
    assert stats["max_ms"] == pytest.approx(20.0)
    assert stats["p50_ms"] == pytest.approx(10.0)


def test_violation_callback_may_call_back_into_the_arm() -> None:
    # The ROS node publishes a report (reading the counters) from inside the callback.
    reports = []
    arm = SimArm(on_violation=lambda kind, msg: reports.append(arm.violation_counts()[kind]))
    done = threading.Event()

    def submit() -> None:
        arm.submit_trajectory(NAMES, [1.0, 1.0], [READY, READY], None, 0.0, 0.0)
        arm.submit_positions([np.nan] * 7, 0.0)
        done.set()

    threading.Thread(target=submit, daemon=True).start()
    assert done.wait(5.0), "deadlock: the callback could not read the counters"
    assert reports == [1, 1]


def test_late_stamped_trajectory_is_sampled_at_the_current_time() -> None:
    """Stamped look-aheads delayed in transport continue the plan without a jump (as in JTC)."""

    def plan(t: float, shift: float = 0.0) -> np.ndarray:
        return target(0.3 * t + shift)  # 0.3 rad/s on joint 1

    arm = SimArm()
    ahead = [0.01 * (j + 1) for j in range(10)]
    arm.submit_trajectory(NAMES, ahead, [plan(a) for a in ahead], None, stamp=0.0, now=100.0)
    # The next look-ahead was stamped at 100.02 but arrives at 100.05: three points are already due.
    arm.submit_trajectory(NAMES, ahead, [plan(0.02 + a) for a in ahead], None, stamp=100.02, now=100.05)
    (q, v), _ = arm.follower.desired(100.05)
    np.testing.assert_allclose(q, plan(0.05), atol=1e-12)
    assert v[0] == pytest.approx(0.3)
    assert sum(arm.violation_counts().values()) == 0
    # A late look-ahead that disagrees with the plan by 0.05 rad makes the desired position jump.
    arm.submit_trajectory(NAMES, ahead, [plan(0.03 + a, 0.05) for a in ahead], None, stamp=100.03, now=100.06)
    assert arm.violation_counts()["too_fast"] == 1
    (q, _), _ = arm.follower.desired(100.06)
    np.testing.assert_allclose(q, plan(0.06, 0.05), atol=1e-12)
