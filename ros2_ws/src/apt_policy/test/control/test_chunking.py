"""Real-time chunking in the control core, simulated clock: delay estimate, prefix, take-over, fallback."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.control.blending import BlendConfig
from apt_policy.control.chunking import (
    ChunkingConfig,
    DelayEstimator,
    delay_in_actions,
    resolve_strategy,
)
from apt_policy.control.controller import Controller, ControllerConfig, ControllerState
from apt_policy.control.limits import JointLimits
from apt_policy.control.schedule import Chunk, ChunkSchedule
from apt_policy.control.semantics import ActionLayout
from apt_policy.robots.franka import get_profile

PROFILE = get_profile("fr3")
LIMITS = JointLimits.from_profile(PROFILE)
Q0 = PROFILE.ready_pose.copy()
CTRL_DT = 0.01
DT = 0.1
H = 16


def ramp(start: np.ndarray, slope: float, horizon: int = H, offset: float = 0.0) -> np.ndarray:
    """(horizon, 8) absolute actions: every joint moves at ``slope`` rad per step, gripper open."""
    steps = np.arange(horizon)[:, None]
    arm = start[None, :] + offset + slope * steps
    return np.hstack([arm, np.full((horizon, 1), 0.08)])


# -------------------------------------------------------------------------------------- pure decisions


def test_delay_counts_actions_consumed_between_observation_and_arrival() -> None:
    assert delay_in_actions(10.0, 10.0, DT) == 1  # at once: the target is at action 0
    assert delay_in_actions(10.0, 10.05, DT) == 2  # moving toward action 1
    assert delay_in_actions(10.0, 10.1, DT) == 2  # exactly at action 1 (no rounding up)
    assert delay_in_actions(10.0, 10.18, DT) == 3
    assert delay_in_actions(10.0, 10.3000001, DT) == 5


def test_estimator_quantile_threshold_and_trained_max() -> None:
    est = DelayEstimator(DT, ChunkingConfig(delay_quantile=0.9, delay_window=20, trained_max_delay=3))
    assert est.estimate == 0 and est.prefix_length(H) == 0
    assert est.request_threshold(8, H) == 8  # the configured floor before any measurement
    for latency in [0.15] * 18 + [0.25, 0.25]:  # 18 x 3 actions, 2 x 4 actions
        est.add(0.0, latency)
    assert est.estimate == 4  # the 0.9 quantile sees the tail
    assert est.over_trained_max == 2 and est.exceeds_trained_max()
    assert est.prefix_length(H) == 4 and est.prefix_length(3) == 2  # one action always left free
    assert est.request_threshold(2, H) == 5  # estimate + 1 above a low floor
    assert est.request_threshold(8, H) == 8
    assert est.request_threshold(30, H) == H - 1
    est.add(0.0, 0.05)
    assert not est.exceeds_trained_max()


def test_blended_switches_request_early_enough_for_the_whole_blend() -> None:
    """overlap = the cross-fade length: the next chunk is due while the executing one still has that many
    actions, so the blend is not cut short by the old chunk's end; which switches are blended follows the
    node's parameters (ros.control_setup.switch_overlap)."""
    from apt_policy.ros.control_setup import switch_overlap
    from apt_policy.ros.params import defaults

    est = DelayEstimator(DT, ChunkingConfig(overlap=3))
    for _ in range(10):
        est.add(0.0, 0.18)  # Orin-like: 3 actions consumed
    assert est.estimate == 3 and est.request_threshold(4, H) == 6 and est.request_threshold(8, H) == 8
    with pytest.raises(ValueError, match="overlap"):
        ChunkingConfig(overlap=0)
    rtc, crossfade = resolve_strategy("rtc", True), resolve_strategy("crossfade", True)
    assert switch_overlap(defaults(blending_steps=3), crossfade) == 3
    assert switch_overlap(defaults(blending_steps=3), rtc) == 1  # on-time take-overs are not blended
    assert switch_overlap(defaults(blending_steps=3, rtc_prefix_max=2), rtc) == 3  # anchored: blended in
    assert switch_overlap(defaults(blending_steps=4, rtc_takeover_blend=True), rtc) == 4
    assert switch_overlap(defaults(blending_steps=3), resolve_strategy("none", True)) == 1


def test_estimator_primed_from_earlier_measurements_keeps_its_counters() -> None:
    est = DelayEstimator(DT, ChunkingConfig(delay_quantile=0.95, delay_window=5))
    est.prime([3, 3, 4, 3, 3, 4, 4])  # older than the window: only the last 5 stay
    assert est.recent() == (4, 3, 3, 4, 4) and est.estimate == 4 and est.prefix_length(H) == 4
    assert est.measured == 0  # priming measures nothing
    with pytest.raises(ValueError, match="at least 1 action"):
        est.prime([0])


def test_strategy_resolution_and_fallback() -> None:
    assert resolve_strategy("auto", rtc_inputs=True).rtc
    auto = resolve_strategy("auto", rtc_inputs=False)
    assert (auto.strategy, auto.rtc, auto.note) == ("crossfade", False, "")
    forced = resolve_strategy("rtc", rtc_inputs=False)
    assert forced.strategy == "crossfade" and not forced.rtc and "no prefix" in forced.note
    assert resolve_strategy("ensemble", rtc_inputs=True).blend_mode == "ensemble"
    assert not resolve_strategy("none", rtc_inputs=True).rtc
    with pytest.raises(ValueError):
        resolve_strategy("bogus", rtc_inputs=True)


# ------------------------------------------------------------------------------------------- schedule


def test_on_time_prefix_chunk_takes_over_at_its_first_non_committed_action() -> None:
    sched = ChunkSchedule(ActionLayout(dof=7, gripper="absolute"), DT, BlendConfig("crossfade"))
    old = ramp(Q0, 0.01)
    assert sched.push(Chunk(old, t_obs=0.0, epoch=1, chunk_id=1), 0.0, 1).accepted
    # request at t_obs = 0.5 with d = 3 committed rows; arrival after 0.18 s (in time: take-over at 0.7 s)
    prefix = sched.committed(0.5, 3, 8, None)
    np.testing.assert_allclose(prefix[:, :7], old[5:8, :7])  # grid-aligned: the old chunk's actions 5..7
    new = ramp(Q0, 0.01, offset=0.10)  # disagrees with the old chunk (new[i] ~ old[5 + i]) by 0.05 rad ...
    new[:3] = prefix  # ... except where committed
    decision = sched.push(Chunk(new, t_obs=0.5, epoch=1, chunk_id=2, prefix_len=3), 0.68, 1)
    assert decision.accepted and decision.rtc == "on_time"
    assert sched.executing_chunk_id(0.69) == 1 and sched.executing_chunk_id(0.7) == 2
    # before the take-over the old chunk runs untouched (no cross-fade toward the new one)
    np.testing.assert_allclose(sched.sample(0.69, prune=False).arm, old[6, :7] + 0.9 * 0.01, atol=1e-12)
    at_take_over = sched.sample(0.7, prune=False)
    np.testing.assert_allclose(at_take_over.arm, prefix[2, :7], atol=1e-12)  # no position step
    assert at_take_over.contributors == 1  # no blending: the prefix made the switch continuous
    # one step later the target is the new chunk's first non-committed action, not the old chunk's
    np.testing.assert_allclose(sched.sample(0.8, prune=False).arm, new[3, :7], atol=1e-12)
    assert np.abs(new[3, :7] - old[8, :7]).max() > 0.04


def test_late_prefix_chunk_is_cross_faded_from_its_arrival() -> None:
    sched = ChunkSchedule(ActionLayout(dof=7, gripper="absolute"), DT, BlendConfig("crossfade", 3))
    old = ramp(Q0, 0.01)
    sched.push(Chunk(old, t_obs=0.0, epoch=1, chunk_id=1), 0.0, 1)


@pytest.mark.parametrize("shape", ["linear", "smoothstep"])
def test_takeover_blend_cross_fades_an_on_time_chunk_from_its_last_committed_action(shape: str) -> None:
    """rtc_takeover: the on-time chunk still waits for its take-over, starts there at the same target (no
    position step), then reaches its own actions after blending_steps; the target's velocity is continuous
    at the take-over, where the plain take-over changes slope at once."""
    jumps = {}
    for takeover in (False, True):
        blend = BlendConfig("crossfade", 3, crossfade_shape=shape, rtc_takeover=takeover)
        sched = ChunkSchedule(ActionLayout(dof=7, gripper="absolute"), DT, blend, interpolation="linear")
        old = ramp(Q0, 0.01)
        sched.push(Chunk(old, t_obs=0.0, epoch=1, chunk_id=1), 0.0, 1)
        new = ramp(Q0, 0.03, offset=0.05)  # three times the old slope after the prefix
        new[:3] = sched.committed(0.5, 3, 8, None)
        new[3:, :7] = new[2, :7] + 0.03 * np.arange(1, H - 2)[:, None]
        decision = sched.push(Chunk(new, t_obs=0.5, epoch=1, chunk_id=2, prefix_len=3), 0.68, 1)
        assert decision.accepted and decision.rtc == "on_time"
        assert sched.executing_chunk_id(0.69) == 1 and sched.executing_chunk_id(0.7) == 2
        np.testing.assert_allclose(sched.sample(0.7, prune=False).arm, new[2, :7], atol=1e-12)
        h = 1e-4
        before = (sched.sample(0.7, prune=False).arm[0] - sched.sample(0.7 - h, prune=False).arm[0]) / h
        after = (sched.sample(0.7 + h, prune=False).arm[0] - sched.sample(0.7, prune=False).arm[0]) / h
        jumps[takeover] = after - before
        blended = sched.sample(0.85, prune=False)
        assert blended.contributors == (2 if takeover else 1)
        np.testing.assert_allclose(sched.sample(1.0, prune=False).arm, new[5, :7], atol=1e-12)  # blend over
    assert jumps[False] == pytest.approx(0.2, rel=1e-3)  # (0.03 - 0.01) rad per 0.1 s step, at once
    # both chunks are at the same target at the take-over, so even the linear weight adds no step there
    assert abs(jumps[True]) < 1e-2 * jumps[False]

    new = ramp(Q0, 0.01, offset=0.05)
    new[:2] = sched.committed(0.5, 2, 8, None)
    decision = sched.push(Chunk(new, t_obs=0.5, epoch=1, chunk_id=2, prefix_len=2), 0.65, 1)  # needed by 0.6
    assert decision.accepted and decision.rtc == "late"
    assert sched.executing_chunk_id(0.65) == 2
    blended = sched.sample(0.7, prune=False)
    assert blended.contributors == 2  # the cross-fade fallback


def test_committed_prefix_in_delta_semantics_resolves_back_to_the_schedule() -> None:
    layout = ActionLayout(dof=7, arm="delta", arm_scale=0.5)
    sched = ChunkSchedule(layout, DT, BlendConfig("none"))
    state_old = Q0 + 0.01
    raw = np.tile(np.linspace(0, 0.2, H)[:, None], (1, 7))
    sched.push(Chunk(raw, t_obs=0.0, epoch=1, state=state_old), 0.0, 1)
    state_new = Q0 - 0.02
    prefix = sched.committed(0.35, 4, 7, state_new)
    for i, row in enumerate(prefix):
        executed = sched.sample(0.35 + i * DT, prune=False).arm
        np.testing.assert_allclose(layout.resolve_arm(row[None], state_new)[0], executed, atol=1e-12)


# ----------------------------------------------------------------------------------------- controller


class Clock:
    """A controller ticked at 100 Hz with a perfectly tracking arm; chunks are pushed by hand."""

    def __init__(self, ctrl: Controller) -> None:
        self.ctrl, self.t, self.q = ctrl, 0.0, Q0.copy()
        self.targets: dict[float, np.ndarray] = {}

    def run_until(self, t_end: float) -> None:
        while self.t < t_end - 1e-9:
            self.t = round(self.t + CTRL_DT, 9)
            cmd = self.ctrl.tick(self.t, self.q)
            if cmd.positions is not None:
                self.q = cmd.positions.copy()
            action = self.ctrl.schedule.sample(self.t, prune=False)
            if action is not None:
                self.targets[self.t] = action.arm.copy()


def make_controller(rtc: bool = True, floor: int = 2, max_prefix: int = 0) -> Controller:
    config = ControllerConfig(
        control_dt=CTRL_DT,
        chunk_dt=DT,
        request_when_left=floor,
        blend=BlendConfig("crossfade"),
        chunking=ChunkingConfig(rtc=rtc, max_prefix=max_prefix),
    )
    ctrl = Controller(LIMITS, ActionLayout(dof=7, gripper="absolute"), config)
    ctrl.set_instruction("reach the red block")
    return ctrl


def test_controller_prefix_equals_what_the_schedule_executes_and_threshold_follows_the_delay() -> None:
    ctrl = make_controller()
    clock = Clock(ctrl)
    clock.run_until(0.1)
    assert ctrl.rtc_prefix(0.1, Q0, 8) is None  # nothing executes yet
    first = Chunk(ramp(Q0, 0.004), t_obs=0.1, epoch=ctrl.epoch, chunk_id=1)
    assert ctrl.on_chunk(first, 0.28).accepted  # measured: 0.18 s = 3 actions consumed
    assert ctrl.chunking_status()["delay_last_actions"] == 3
    assert ctrl.request_threshold() == 4  # estimate 3 + 1 above the floor of 2
    clock.run_until(1.2)
    assert ctrl.state == ControllerState.RUNNING
    assert not ctrl.should_request(1.2)  # 16 - 11 = 5 actions left
    clock.run_until(1.3)
    assert ctrl.should_request(1.3)  # 4 left: request now
    t_obs = 1.3
    prefix = ctrl.rtc_prefix(t_obs, Q0, 8)
    assert prefix is not None and prefix.shape == (3, 8)
    new = ramp(prefix[-1, :7], 0.006, offset=0.0)
    new = np.vstack([prefix, new[1 : H - 2]])
    chunk = Chunk(new, t_obs=t_obs, epoch=ctrl.epoch, chunk_id=2, prefix_len=3)
    decision = ctrl.on_chunk(chunk, t_obs + 0.19)
    assert decision.accepted and decision.rtc == "on_time"
    clock.run_until(2.0)
    for i in range(3):  # the prefix sent is what the schedule executed at the new chunk's grid times
        t = round(t_obs + i * DT, 9)
        np.testing.assert_allclose(clock.targets[t], prefix[i, :7], atol=1e-12)
    np.testing.assert_allclose(clock.targets[round(t_obs + 3 * DT, 9)], new[3, :7], atol=1e-12)
    assert ctrl.chunking_status()["rtc_on_time"] == 1 and ctrl.chunking_status()["rtc_late"] == 0


def test_anchored_prefix_sends_at_most_max_prefix_rows_and_the_chunk_is_cross_faded_in() -> None:
    est = DelayEstimator(DT, ChunkingConfig(max_prefix=1))
    for latency in (0.18, 0.25):
        est.add(0.0, latency)
    assert est.estimate == 4 and est.prefix_length(H) == 1  # capped; the threshold still sees the delay
    assert est.request_threshold(2, H) == 5
    with pytest.raises(ValueError, match="max_prefix"):
        ChunkingConfig(max_prefix=-1)

    ctrl = make_controller(max_prefix=1)
    clock = Clock(ctrl)
    clock.run_until(0.1)
    assert ctrl.on_chunk(Chunk(ramp(Q0, 0.004), t_obs=0.1, epoch=ctrl.epoch, chunk_id=1), 0.28).accepted
    clock.run_until(1.3)
    t_obs = 1.3
    prefix = ctrl.rtc_prefix(t_obs, Q0, 8)
    assert prefix is not None and prefix.shape == (1, 8)  # where the arm is at t_obs, nothing after it
    new = ramp(prefix[0, :7], 0.006)  # continues at another speed: not the executing chunk's rows 1..2
    anchored = Chunk(new, t_obs=t_obs, epoch=ctrl.epoch, chunk_id=2, prefix_len=1)
    decision = ctrl.on_chunk(anchored, t_obs + 0.19)
    assert decision.accepted and decision.rtc == "late"  # its 1-row prefix ended before it arrived
    clock.run_until(2.5)
    old_row_1 = Q0 + 0.004 * (round((t_obs - 0.1) / DT) + 1)  # executing chunk, t_obs + dt (before arrival)
    np.testing.assert_allclose(clock.targets[round(t_obs + DT, 9)], old_row_1, atol=1e-12)
    k = 7  # t_obs + 0.7 s: after the cross-fade (blending_steps 3 actions from the arrival at t_obs + 0.19)
    np.testing.assert_allclose(clock.targets[round(t_obs + k * DT, 9)], new[k, :7], atol=1e-9)
    status = ctrl.chunking_status()
    assert status["rtc_anchored"] == 1 and status["rtc_late"] == 0 and status["rtc_on_time"] == 0
    plain = DelayEstimator(DT)  # no cap: a chunk after its prefix outran the estimate
    plain.count_late(3)
    assert plain.late == 1 and plain.anchored == 0


def test_no_prefix_when_rtc_is_off_or_holding() -> None:
    ctrl = make_controller(rtc=False)
    clock = Clock(ctrl)
    ctrl.on_chunk(Chunk(ramp(Q0, 0.0), t_obs=0.0, epoch=ctrl.epoch), 0.05)
    clock.run_until(0.3)
    assert ctrl.state == ControllerState.RUNNING and ctrl.rtc_prefix(0.3, Q0, 8) is None
    rtc = make_controller(rtc=True)
    clock = Clock(rtc)
    rtc.on_chunk(Chunk(ramp(Q0, 0.0), t_obs=0.0, epoch=rtc.epoch), 0.05)
    clock.run_until(0.3)
    assert rtc.rtc_prefix(0.3, Q0, 8) is not None
    rtc.on_inference_error("boom")
    clock.run_until(0.4)
    assert rtc.state == ControllerState.HOLDING and rtc.rtc_prefix(0.4, Q0, 8) is None
