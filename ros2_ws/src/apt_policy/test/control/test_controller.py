"""Controller on a simulated clock: state machine, watchdog holds, pause/stop/fault, semantics, look-ahead."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from apt_policy.control.blending import BlendConfig
from apt_policy.control.controller import (
    WAITING_FOR_CHUNK,
    Command,
    Controller,
    ControllerConfig,
    ControllerState,
)
from apt_policy.control.inference_worker import ChunkResult
from apt_policy.control.limits import JointLimits
from apt_policy.control.schedule import Chunk
from apt_policy.control.semantics import ActionLayout
from apt_policy.robots.franka import get_profile

PROFILE = get_profile("fr3")
LIMITS = JointLimits.from_profile(PROFILE)
Q0 = PROFILE.ready_pose.copy()
CTRL_DT = 0.01
CHUNK_DT = 0.1
S = ControllerState


class Sim:
    """Simulated clock + an arm that follows the command perfectly; inputs can be made stale or wrong."""

    def __init__(self, ctrl: Controller, q: np.ndarray = Q0) -> None:
        self.ctrl = ctrl
        self.t = 100.0
        self.measured = q.copy()
        self.state_stamp: float | None = self.t
        self.cameras: dict[str, float | None] = {"wrist": self.t}
        self.fresh_state = True
        self.fresh_cameras = True
        self.commands: list[Command] = []

    def step(self, n: int = 1, measured_offset: np.ndarray | None = None) -> Command:
        for _ in range(n):
            self.t = round(self.t + CTRL_DT, 9)
            if self.fresh_state:
                self.state_stamp = self.t
            if self.fresh_cameras:
                self.cameras = {name: self.t for name in self.cameras}
            measured = self.measured if measured_offset is None else self.measured + measured_offset
            cmd = self.ctrl.tick(self.t, measured, state_stamp=self.state_stamp, camera_stamps=self.cameras)
            if cmd.positions is not None:
                self.measured = cmd.positions.copy()
            self.commands.append(cmd)
        return self.commands[-1]

    def chunk(self, actions: np.ndarray, latency: float = 0.03, **kw) -> Chunk:
        """A chunk whose observation was taken ``latency`` s ago, for the current epoch."""
        return Chunk(
            actions=actions, t_obs=self.t - latency, epoch=self.ctrl.epoch, state=self.measured, **kw
        )

    def push(self, actions: np.ndarray, latency: float = 0.03, **kw):
        return self.ctrl.on_chunk(self.chunk(actions, latency, **kw), self.t)


def make(arm: str = "absolute", gripper: str = "absolute", **config) -> Controller:
    config.setdefault("blend", BlendConfig(mode="none"))
    layout = ActionLayout(dof=7, arm=arm, gripper=gripper)
    return Controller(LIMITS, layout, ControllerConfig(control_dt=CTRL_DT, chunk_dt=CHUNK_DT, **config))


def constant(q: np.ndarray, horizon: int = 20, gripper: float = 0.04) -> np.ndarray:
    return np.tile(np.r_[q, gripper], (horizon, 1))


def assert_commands_safe(ctrl: Controller, commands: list[Command]) -> None:
    """Limits on every command and on the motion between consecutive ones (relative to the command)."""
    f = ctrl.safety
    prev = prev_step = prev_dv = None
    for cmd in commands:
        if cmd.positions is None:
            prev = prev_step = prev_dv = None
            continue
        assert np.all(cmd.positions >= f.lower - 1e-9) and np.all(cmd.positions <= f.upper + 1e-9)
        assert np.all(np.abs(cmd.velocities) <= f.v_max + 1e-9)
        if prev is not None:
            step = cmd.positions - prev.positions
            assert np.all(np.abs(step) <= f.v_max * f.dt + 1e-9)
            dv = cmd.velocities - prev.velocities
            assert np.all(np.abs(dv) <= f.a_max * f.dt + 1e-9)
            if prev_dv is not None:  # acceleration jump at a point (jerk at the robot's 1 kHz)
                assert np.all(np.abs(dv - prev_dv) <= f.j_step * f.dt + 1e-9)
            prev_dv = dv
            if prev_step is not None:  # finite-difference acceleration of the positions
                assert np.all(np.abs(step - prev_step) <= f.a_max * f.dt**2 + 1e-9)
            prev_step = step
        prev = cmd


def running_sim(**config) -> Sim:
    sim = Sim(make(**config))
    assert sim.step().state == S.IDLE
    sim.ctrl.set_instruction("reach")
    return sim


def test_idle_instruction_first_chunk_running_and_reaching_the_target() -> None:
    sim = Sim(make())
    cmd = sim.step()
    assert cmd.state == S.IDLE and cmd.reason == "no instruction"
    np.testing.assert_allclose(cmd.positions, Q0)  # first command: measured state, at rest
    sim.ctrl.set_instruction("reach the cube")
    cmd = sim.step()
    assert cmd.state == S.HOLDING and cmd.reason == WAITING_FOR_CHUNK
    assert sim.ctrl.should_request(sim.t)
    target = Q0 + 0.1
    assert sim.push(constant(target, horizon=40)).accepted
    cmd = sim.step()
    assert cmd.state == S.RUNNING and cmd.reason == "" and cmd.gripper == pytest.approx(0.04)
    sim.step(150)
    np.testing.assert_allclose(sim.measured, target, atol=1e-9)
    status = sim.ctrl.status()
    assert status.chunks_accepted == 1 and status.ticks == 153 and status.instruction == "reach the cube"
    assert status.last_fault == ""  # waiting for the first chunk is not a fault
    assert_commands_safe(sim.ctrl, sim.commands)


def test_lost_joint_state_sends_nothing_and_resynchronises_from_the_arm_at_rest() -> None:
    """The arm's controller may restart while its state is missing: no command until a fresh state shows the
    arm at rest after the last trajectory sent has ended, then the plan starts from that state."""
    sim = running_sim()
    sim.push(_ramp(Q0, speed=0.5, horizon=60))
    sim.step(60)
    moving = sim.commands[-1]
    assert moving.state == S.RUNNING and np.linalg.norm(moving.velocities) > 0.1
    plan_end = sim.t + moving.trajectory.times[-1]
    sim.fresh_state = False  # joint state stops arriving
    offset = np.full(7, 0.05)  # ... and the last one we have is off: must not be chased
    held = [sim.step(measured_offset=offset) for _ in range(120)]
    assert all(c.state == S.RUNNING and c.positions is not None for c in held[:10])  # 0.1 s max age
    lost = held[11:]
    assert all(c.state == S.HOLDING and "joint state stale" in c.reason for c in lost)
    assert all(c.positions is None and c.trajectory is None for c in lost)  # nothing sent to whoever is back
    assert_commands_safe(sim.ctrl, sim.commands)
    # A restarted controller somewhere else: fresh states from it; nothing until it has been at rest.
    restarted = Q0 + 0.3
    sim.fresh_state = True
    sim.measured = restarted
    waiting = [sim.step() for _ in range(int(0.1 / CTRL_DT))]
    assert all(c.positions is None and "re-synchronising" in c.reason for c in waiting)
    assert sim.t >= plan_end
    cmd = sim.step()
    assert cmd.positions is not None and cmd.state == S.HOLDING and cmd.reason == WAITING_FOR_CHUNK
    np.testing.assert_allclose(cmd.positions, restarted)  # from the measured state, at rest
    np.testing.assert_allclose(cmd.trajectory.positions[0], restarted)
    assert cmd.actions_left == 0  # the chunks planned before the loss are not resumed
    assert sim.push(constant(restarted + 0.02)).accepted
    assert sim.step().state == S.RUNNING
    assert "joint state stale" in sim.ctrl.status().last_fault
    assert sim.ctrl.status().safety_interventions >= 100


def _ramp(q: np.ndarray, speed: float, horizon: int) -> np.ndarray:
    """Absolute targets moving every joint at ``speed`` rad/s, plus a gripper column."""
    steps = np.arange(horizon)[:, None] * CHUNK_DT * speed
    arm = q[None, :] + steps * np.array([1, 1, 1, 1, 1, -1, 1])
    return np.concatenate([arm, np.full((horizon, 1), 0.08)], axis=1)


def test_stale_or_missing_camera_holds_and_recovers() -> None:
    sim = running_sim(max_tracking_error=np.inf)
    sim.push(constant(Q0, horizon=100))
    assert sim.step().state == S.RUNNING
    sim.fresh_cameras = False
    sim.step(30)
    assert sim.commands[-1].state == S.HOLDING and "camera 'wrist' stale" in sim.commands[-1].reason
    sim.fresh_cameras = True
    assert sim.step().state == S.RUNNING
    sim.fresh_cameras = False
    sim.cameras = {"wrist": sim.t + CTRL_DT, "scene": None}
    cmd = sim.step()
    assert cmd.state == S.HOLDING and "camera 'scene' has no frame" in cmd.reason


def test_input_problem_from_the_node_holds() -> None:
    sim = running_sim()
    sim.push(constant(Q0))
    sim.step()
    cmd = sim.ctrl.tick(sim.t + CTRL_DT, sim.measured, input_problem="image skew 0.3 s")
    assert cmd.state == S.HOLDING and cmd.reason == "image skew 0.3 s"


def test_inference_failure_holds_until_the_next_accepted_chunk() -> None:
    sim = running_sim()
    sim.push(constant(Q0, horizon=50))
    assert sim.step().state == S.RUNNING
    assert not sim.ctrl.should_request(sim.t)  # plenty of actions left
    sim.ctrl.on_inference_error("CUDA out of memory")
    cmd = sim.step()
    assert cmd.state == S.HOLDING and cmd.reason == "inference failed: CUDA out of memory"
    assert sim.ctrl.should_request(sim.t)  # a good chunk is wanted at once
    assert sim.push(constant(Q0)).accepted
    assert sim.step().state == S.RUNNING


def test_too_slow_inference_is_refused_and_holds() -> None:
    sim = running_sim()
    decision = sim.push(constant(Q0, horizon=100), latency=0.8)
    assert not decision.accepted and "too slow" in decision.reason
    cmd = sim.step()
    assert cmd.state == S.HOLDING and "inference too slow" in cmd.reason
    assert sim.ctrl.status().chunks_refused == 1
    assert sim.push(constant(Q0), latency=0.05).accepted
    assert sim.step().state == S.RUNNING


def test_exhausted_buffer_holds_and_requests_at_the_threshold() -> None:
    sim = running_sim(request_when_left=3)
    sim.push(constant(Q0, horizon=10), latency=0.0)  # actions for [t, t + 1.0)
    sim.step(5)
    assert not sim.ctrl.should_request(sim.t)
    sim.step(65)  # t_obs + 0.70: step 7, 3 left
    assert sim.ctrl.should_request(sim.t) and sim.commands[-1].actions_left == 3
    sim.step(30)
    cmd = sim.commands[-1]
    assert cmd.state == S.HOLDING and cmd.reason == "action buffer exhausted" and cmd.actions_left == 0


def test_stale_epoch_chunks_are_refused_after_a_new_instruction_or_stop() -> None:
    sim = running_sim()
    old = sim.chunk(constant(Q0 + 0.1))
    sim.ctrl.set_instruction("something else")
    decision = sim.ctrl.on_chunk(old, sim.t)
    assert not decision.accepted and "stale instruction epoch" in decision.reason
    assert sim.step().reason == WAITING_FOR_CHUNK
    current = sim.chunk(constant(Q0))
    assert sim.ctrl.stop() > current.epoch
    assert sim.step().state == S.IDLE
    assert not sim.ctrl.on_chunk(current, sim.t).accepted
    assert not sim.ctrl.should_request(sim.t)
    assert sim.ctrl.instruction == ""


def test_pause_holds_drops_the_buffer_and_resume_waits_for_a_fresh_chunk() -> None:
    sim = running_sim()
    assert not Sim(make()).ctrl.pause()  # nothing to pause in IDLE
    sim.push(_ramp(Q0, speed=0.5, horizon=60))
    sim.step(40)
    assert sim.ctrl.pause()
    paused = [sim.step() for _ in range(60)]
    assert all(c.state == S.PAUSED for c in paused)
    np.testing.assert_allclose(paused[-1].velocities, 0.0)
    assert not sim.push(constant(Q0)).accepted and not sim.ctrl.should_request(sim.t)
    assert sim.ctrl.resume() and not sim.ctrl.resume()
    assert sim.step().reason == WAITING_FOR_CHUNK
    sim.push(constant(paused[-1].positions))
    assert sim.step().state == S.RUNNING
    assert_commands_safe(sim.ctrl, sim.commands)


def test_resynchronise_starts_again_from_an_arm_moved_while_nothing_was_streamed() -> None:
    """What a deactivate / activate of the node does: the arm moved elsewhere meanwhile (another controller,
    a simulation reset) is no tracking error; the stream waits for it at rest and starts from it."""
    sim = running_sim(max_tracking_error=0.2)
    sim.push(constant(Q0 + 0.05))
    sim.step(30)
    sim.ctrl.stop()
    sim.step(60)  # the braking hold has ended
    sim.ctrl.resynchronise("deactivated")
    moved = Q0 + np.r_[0.6, -0.4, np.zeros(5)]  # far beyond max_tracking_error from the last command
    sim.measured = moved
    waiting = []
    while (cmd := sim.step()).positions is None and len(waiting) < 100:
        waiting.append(cmd)
    assert all("re-synchronising after 'deactivated'" in c.reason and c.state == S.IDLE for c in waiting)
    assert len(waiting) * CTRL_DT >= sim.ctrl.config.resync_settle_time - 1e-9  # at rest that long first
    assert cmd.state == S.IDLE and cmd.positions is not None
    np.testing.assert_allclose(cmd.positions, moved)
    np.testing.assert_allclose(cmd.velocities, 0.0)
    sim.ctrl.set_instruction("reach")
    sim.push(constant(moved + 0.02))
    sim.step(100)
    assert sim.commands[-1].state == S.RUNNING and sim.ctrl.status().last_fault == ""
    np.testing.assert_allclose(sim.measured, moved + 0.02, atol=1e-9)
    assert_commands_safe(sim.ctrl, sim.commands[-101:])


def test_tracking_error_faults_and_reset_needs_the_arm_at_rest_then_restarts_from_it() -> None:
    sim = running_sim(max_tracking_error=0.2)
    sim.push(constant(Q0))
    sim.step()
    bumped = sim.measured + np.r_[0.5, np.zeros(6)]  # the arm was pushed away (or a reflex moved it)
    cmd = sim.ctrl.tick(sim.t + CTRL_DT, bumped, state_stamp=sim.t + CTRL_DT)
    assert cmd.state == S.FAULT and "tracking error" in cmd.reason and "fr3_joint1" in cmd.reason
    assert cmd.positions is None and cmd.trajectory is None  # nothing to send: never yank it back
    with pytest.raises(ValueError, match="FAULT"):
        sim.ctrl.set_instruction("again")
    assert not sim.ctrl.on_chunk(sim.chunk(constant(Q0)), sim.t).accepted
    ok, why = sim.ctrl.reset()
    assert not ok and "the last trajectory sent ends in" in why  # the arm may still be moving
    t = sim.t + CTRL_DT
    for k in range(2, 40):  # the arm at rest where it was pushed, state fresh
        t = sim.t + k * CTRL_DT
        assert sim.ctrl.tick(t, bumped, state_stamp=t).positions is None
    stale_t = t + 1.0
    sim.ctrl.tick(stale_t, bumped, state_stamp=t)  # the state stops: no reset on an old state
    ok, why = sim.ctrl.reset()
    assert not ok and "no fresh joint state" in why
    for k in range(1, 15):
        assert (
            sim.ctrl.tick(stale_t + k * CTRL_DT, bumped, state_stamp=stale_t + k * CTRL_DT).positions is None
        )
    ok, why = sim.ctrl.reset()
    assert ok and "tracking error" in why
    assert not sim.ctrl.reset()[0]  # not in FAULT any more
    t = stale_t + 15 * CTRL_DT
    cmd = sim.ctrl.tick(t, bumped, state_stamp=t)
    assert cmd.state == S.IDLE
    np.testing.assert_allclose(cmd.positions, bumped)  # operator-acknowledged re-synchronisation
    np.testing.assert_allclose(cmd.velocities, 0.0)


def test_external_fault_and_start_outside_the_safe_range() -> None:
    sim = running_sim()
    sim.ctrl.fault("robot reflex: joint 4 torque")
    assert sim.step().state == S.FAULT and sim.ctrl.status().last_fault == "robot reflex: joint 4 torque"
    q = Q0.copy()
    q[3] = LIMITS.upper[3] - 0.01  # inside the margin
    ctrl = make()
    cmd = ctrl.tick(0.0, q, state_stamp=0.0)
    assert cmd.state == S.FAULT and cmd.positions is None and "fr3_joint4" in cmd.reason


def test_no_command_before_a_valid_joint_state_and_nan_state_holds() -> None:
    ctrl = make()
    cmd = ctrl.tick(0.0, None)
    assert cmd.positions is None and "waiting for a valid joint state" in cmd.reason
    assert ctrl.tick(0.01, np.full(7, np.nan)).positions is None
    sim = running_sim()
    sim.push(constant(Q0))
    sim.step()
    cmd = sim.ctrl.tick(sim.t + CTRL_DT, np.full(7, np.nan), state_stamp=sim.t + CTRL_DT)
    assert cmd.state == S.HOLDING and "not finite" in cmd.reason
    assert cmd.positions is None  # a broken state is a lost state: nothing sent, re-synchronise later


def test_velocity_semantics_integrate_at_the_control_rate() -> None:
    sim = running_sim(arm="velocity", gripper="none")
    v = np.array([0.2, -0.1, 0.0, 0.1, 0.0, 0.0, 0.3])
    sim.push(np.tile(v, (30, 1)))
    sim.step(50)  # well past the acceleration ramp
    a, b = sim.commands[-2], sim.commands[-1]
    np.testing.assert_allclose(b.velocities, v, atol=1e-12)
    np.testing.assert_allclose(b.positions - a.positions, v * CTRL_DT, atol=1e-12)
    assert b.gripper is None


def test_delta_semantics_use_the_state_of_the_chunk_observation() -> None:
    sim = running_sim(arm="delta")
    chunk = Chunk(np.tile(np.r_[np.full(7, 0.05), 0.0], (40, 1)), sim.t, sim.ctrl.epoch, state=Q0 - 0.02)
    assert sim.ctrl.on_chunk(chunk, sim.t).accepted
    sim.step(200)
    np.testing.assert_allclose(sim.measured[:5], (Q0 + 0.03)[:5], atol=1e-9)


def test_malformed_chunks_are_refused_without_raising() -> None:
    sim = running_sim()
    for bad in (
        object(),  # no fields at all
        Chunk(actions=[["a", "b"]], t_obs=sim.t, epoch=sim.ctrl.epoch),  # not numbers
        Chunk(actions=constant(Q0), t_obs="soon", epoch=sim.ctrl.epoch),  # type: ignore[arg-type]
        Chunk(actions=np.zeros((0, 8)), t_obs=sim.t, epoch=sim.ctrl.epoch),  # empty
    ):
        decision = sim.ctrl.on_chunk(bad, sim.t)
        assert not decision.accepted and decision.reason
    assert sim.ctrl.status().chunks_refused == 4
    assert sim.push(constant(Q0)).accepted  # and it keeps working
    assert sim.step().state == S.RUNNING


def test_worker_chunk_results_are_accepted_directly() -> None:
    sim = running_sim()
    result = ChunkResult(
        actions=constant(Q0 + 0.01),
        t_obs=sim.t - 0.05,
        stamp_s=sim.t - 0.06,
        state=Q0,
        instruction="reach",
        epoch=sim.ctrl.epoch,
        chunk_id=7,
        inference_s=0.04,
    )
    assert sim.ctrl.on_chunk(result, sim.t).accepted
    assert sim.step().chunk_id == 7


def check_trajectory(ctrl: Controller, cmd: Command, points: int) -> None:
    traj = cmd.trajectory
    f = ctrl.safety
    assert len(traj) >= points
    assert traj.times[0] == pytest.approx(CTRL_DT) and traj.times[0] > 0
    assert np.all(np.diff(traj.times) > 0)
    np.testing.assert_array_equal(traj.velocities[-1], 0.0)
    np.testing.assert_allclose(traj.positions[0], cmd.positions)  # point 1 = this tick's command
    assert_jtc_path_within_limits(f, traj)


def assert_jtc_path_within_limits(f, traj, first_acc: np.ndarray | None = None) -> None:
    """What the JTC makes of ``traj`` (cubic Hermite between points, any spacing): inside the position
    limits, within v_max and a_max everywhere, and the acceleration's jump at each point within J."""
    assert np.all(traj.positions >= f.lower - 1e-9) and np.all(traj.positions <= f.upper + 1e-9)
    assert np.all(np.abs(traj.velocities) <= f.v_max + 1e-9)
    h = np.diff(traj.times)[:, None]
    p0, p1 = traj.positions[:-1], traj.positions[1:]
    m0, m1 = traj.velocities[:-1] * h, traj.velocities[1:] * h
    assert np.all(np.abs(p1 - p0) <= f.v_max * h + 1e-9)
    for u in np.linspace(0.0, 1.0, 9):
        h00, h10, h01, h11 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u, -2 * u**3 + 3 * u**2, u**3 - u**2
        mid = h00 * p0 + h10 * m0 + h01 * p1 + h11 * m1
        assert np.all(mid >= f.lower - 1e-9) and np.all(mid <= f.upper + 1e-9)
        vel = ((6 * u**2 - 6 * u) * (p0 - p1) + (3 * u**2 - 4 * u + 1) * m0 + (3 * u**2 - 2 * u) * m1) / h
        assert np.all(np.abs(vel) <= f.v_max + 1e-9)
    acc_start = (-6 * p0 - 4 * m0 + 6 * p1 - 2 * m1) / h**2  # the cubic's acceleration at each end
    acc_end = (6 * p0 + 2 * m0 - 6 * p1 + 4 * m1) / h**2
    tol = f.a_max * 1e-6 + 1e-6
    assert np.all(np.abs(acc_start) <= f.a_max + tol) and np.all(np.abs(acc_end) <= f.a_max + tol)
    # the acceleration is linear in between, so the ends bound it; jerk: its jump at each inner point
    # (the first point's jump from the command's own acceleration, the last one's to rest)
    jumps = [acc_start[1:] - acc_end[:-1], acc_end[-1:]]
    if first_acc is not None:
        jumps.append(acc_start[:1] - first_acc)
    assert np.all(np.abs(np.concatenate(jumps)) <= f.j_step + tol)


@pytest.mark.parametrize(("seed", "points"), [(0, 1), (1, 5), (2, 19)])
def test_lookahead_contract_over_random_runs(seed: int, points: int) -> None:
    rng = np.random.default_rng(seed)
    sim = running_sim(max_tracking_error=np.inf, blend=BlendConfig(mode="crossfade"), lookahead_points=points)
    for k in range(200):
        if k % 20 == 0 and rng.random() < 0.6:  # short random chunks, some beyond the limits; gaps hold
            lo, hi = LIMITS.lower - 0.2, LIMITS.upper + 0.2
            targets = rng.uniform(lo, hi, (2, 7)) if rng.random() < 0.3 else _ramp(Q0, 1.0, 2)[:, :7]
            sim.push(np.c_[targets, np.zeros(2)], latency=float(rng.uniform(0, 0.05)))
        cmd = sim.step()
        check_trajectory(sim.ctrl, cmd, points=points)
    assert {c.state for c in sim.commands} >= {S.RUNNING, S.HOLDING}
    assert_commands_safe(sim.ctrl, sim.commands)


def test_lookahead_in_hold_is_braking_to_rest() -> None:
    sim = running_sim()
    sim.push(_ramp(Q0, speed=1.0, horizon=60))
    sim.step(50)
    sim.ctrl.on_inference_error("boom")
    cmd = sim.step()
    traj = cmd.trajectory
    speeds = np.abs(np.diff(traj.positions, axis=0)) / np.diff(traj.times)[:, None]
    assert np.all(np.diff(speeds, axis=0) <= 1e-9)  # never speeding up
    np.testing.assert_allclose(traj.positions[0], cmd.positions)


def test_concurrent_chunks_instructions_and_ticks_keep_the_guarantees() -> None:
    ctrl = make(max_tracking_error=np.inf)
    sim = Sim(ctrl)
    sim.step()
    ctrl.set_instruction("go")
    stop = threading.Event()
    rng = np.random.default_rng(5)

    def feeder() -> None:
        while not stop.is_set():
            if rng.random() < 0.05:
                ctrl.set_instruction("new")
            ctrl.on_chunk(Chunk(np.c_[rng.uniform(-3, 3, (10, 7)), np.zeros(10)], sim.t, ctrl.epoch), sim.t)

    thread = threading.Thread(target=feeder)
    thread.start()
    try:
        sim.step(1500)
    finally:
        stop.set()
        thread.join()
    assert ctrl.status().chunks_accepted > 0
    assert_commands_safe(ctrl, sim.commands)


def test_a_lagging_arm_runs_and_an_arm_that_does_not_follow_faults() -> None:
    """Closed loop with default limits: the measured state trails the command by 5 ticks (50 ms)."""
    ctrl = make()
    t, history = 0.0, [Q0.copy()] * 5
    ctrl.tick(t, Q0, state_stamp=t)
    ctrl.set_instruction("sweep")
    far = _ramp(Q0, speed=2.0, horizon=30)  # faster than the scaled velocity limit: the filter caps it
    ctrl.on_chunk(Chunk(far, t, ctrl.epoch), t)
    states = []
    for k in range(1, 300):
        t = k * CTRL_DT
        cmd = ctrl.tick(t, history[-5], state_stamp=t)
        states.append(cmd.state)
        history.append(cmd.positions)
    assert set(states[1:]) <= {S.RUNNING, S.HOLDING} and S.FAULT not in states
    assert np.max(np.abs(history[-1] - Q0)) > 1.0  # it really moved, at v_max
    # the same with an arm that never moves (controller inactive, brakes on): FAULT, then no command
    ctrl = make()
    ctrl.tick(0.0, Q0, state_stamp=0.0)
    ctrl.set_instruction("sweep")
    ctrl.on_chunk(Chunk(far, 0.0, ctrl.epoch), 0.0)
    for k in range(1, 100):
        cmd = ctrl.tick(k * CTRL_DT, Q0, state_stamp=k * CTRL_DT)
        if cmd.state == S.FAULT:
            break
        assert np.max(np.abs(cmd.positions - Q0)) <= ctrl.config.max_tracking_error + 1e-9
    assert cmd.state == S.FAULT and "tracking error" in cmd.reason and cmd.positions is None


def test_reconfigure_refuses_limits_the_last_command_violates_and_timing_changes() -> None:
    import dataclasses

    from apt_policy.control.safety import CommandState

    ctrl = make()
    cfg = ctrl.config
    assert "control_dt" in (ctrl.reconfigure(dataclasses.replace(cfg, control_dt=0.002)) or "")
    assert ctrl.reconfigure(dataclasses.replace(cfg, blend=BlendConfig(mode="ensemble"))) is None
    assert ctrl.schedule.blend.mode == "ensemble"
    cfg = ctrl.config
    mid = (LIMITS.lower + LIMITS.upper) / 2
    fast = ctrl.safety.v_max * 0.9  # moving at 90 % of today's velocity limit on every joint
    ctrl._cmd = CommandState(mid, fast, np.zeros(7))
    slower = dataclasses.replace(cfg.safety, velocity_scale=cfg.safety.velocity_scale * 0.5)
    why = ctrl.reconfigure(dataclasses.replace(cfg, safety=slower))
    assert why is not None and "outside the new safety limits" in why
    assert ctrl.config.safety == cfg.safety and np.allclose(ctrl.safety.v_max, fast / 0.9)  # unchanged
    ctrl._cmd = CommandState(mid, np.zeros(7), np.zeros(7))  # at rest: the new limit applies
    assert ctrl.reconfigure(dataclasses.replace(cfg, safety=slower)) is None
    assert np.allclose(ctrl.safety.v_max, fast / 0.9 * 0.5)
