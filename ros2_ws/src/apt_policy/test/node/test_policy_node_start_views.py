"""A model with a start view (``front@start``, core.start_views) behind the policy node, over real DDS in one
process: the node subscribes only the live camera, and every prediction gets the live frame plus the frame
of the episode's first prediction, taken again after a hold and on a new instruction."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")

from apt_msgs.msg import PolicyStatus
from apt_policy.sim import stand_ins
from apt_policy.sim.stand_ins import policy_node_with_stand_in, stand_in_parameters
from apt_policy.sim.stand_ins import wait_until as _wait

pytestmark = pytest.mark.ros


class StartViewPolicy(stand_ins.ScriptedPolicy):
    """The scripted stand-in with cameras front + front@start and no history steps (the start view alone
    makes it stateful); records (instruction, live frame value, start-view frame value) per call."""

    def __init__(self) -> None:
        super().__init__(image_shape=(24, 32), latency_s=0.02, model_id="start-view-test")
        self.info = replace(self.info, cameras=("front", "front@start"))
        self.seen: list[tuple[str, int, int]] = []

    def predict(self, images, state, instruction, noise=None, prefix=None, history=None):
        assert set(images) == {"front", "front@start"}
        self.seen.append((instruction, int(images["front"][0, 0, 0]), int(images["front@start"][0, 0, 0])))
        return super().predict(images, state, instruction, noise)


@pytest.fixture
def running(ros_env, tmp_path: Path):
    policy = StartViewPolicy()
    params = stand_in_parameters(tmp_path, chunk_execution="none")
    with policy_node_with_stand_in(policy, params) as (node, probe):
        probe.numbered_frames = True
        yield node, probe, policy


def _calls(policy: StartViewPolicy, instruction: str, since: int = 0) -> list[tuple[int, int]]:
    return [(live, start) for i, live, start in policy.seen[since:] if i == instruction]


def test_the_start_view_is_the_episodes_first_frame_until_a_hold_or_a_new_instruction(running) -> None:
    node, probe, policy = running
    assert list(node.camera_names) == ["front"]  # one topic: the start view is the node's
    _wait(lambda: probe.state() == PolicyStatus.IDLE, what="IDLE")
    node.set_instruction("go left")
    _wait(lambda: len(_calls(policy, "go left")) >= 4, what="four predictions")
    calls = _calls(policy, "go left")
    first_live, first_start = calls[0]
    assert first_start == first_live  # the episode's first prediction takes the frame it is given
    assert all(start == first_live for _, start in calls)  # ... and every later one gets that frame
    assert any(live != first_live for live, _ in calls)  # while the live frames moved on
    # a hold (camera stopped) ends the episode: the first prediction after it takes the frame again
    probe.camera_on = False
    _wait(lambda: node.status_snapshot()["state_name"] == "HOLDING", timeout=3.0, what="HOLDING")
    mark = len(policy.seen)
    probe.camera_on = True
    _wait(lambda: len(_calls(policy, "go left", mark)) >= 2, what="predictions after the hold")
    after = _calls(policy, "go left", mark)
    assert after[0][1] == after[0][0] != first_live
    assert all(start == after[0][0] for _, start in after)
    # a new instruction is a new episode too
    mark = len(policy.seen)
    node.set_instruction("go right")
    _wait(lambda: len(_calls(policy, "go right", mark)) >= 2, what="predictions for the new instruction")
    right = _calls(policy, "go right", mark)
    assert right[0][1] == right[0][0] != after[0][0]
    assert all(start == right[0][0] for _, start in right)


def test_a_command_planned_before_a_new_instruction_and_sent_after_it_starts_no_second_episode(running):
    """The stream plans a tick, then sends it at its deadline: an instruction arriving in between makes that
    command the previous instruction's. Kept in the history, it made the next hold tick begin a second
    episode, and the new instruction's second prediction took the start views again (mid-motion): every
    switch episode of the first DDS runs with a start-view model ended 2.7 cm off instead of 1.6."""
    from apt_policy.control.controller import Command, ControllerState
    from apt_policy.control.safety import Interventions
    from apt_policy.robots.franka import FR3

    node, probe, policy = running
    _wait(lambda: probe.state() == PolicyStatus.IDLE, what="IDLE")
    node.set_instruction("go left")
    _wait(lambda: node.status_snapshot()["state_name"] == "RUNNING", what="RUNNING")
    _wait(lambda: node.history._since_reset, what="a command of it kept")  # so the switch begins an episode
    policy.latency_s = 2.0  # the new instruction's first chunk stays away while the test looks
    ready = np.asarray(FR3.ready_pose, np.float64)
    planned = Command(  # a RUNNING tick of "go left", as the stream planned it
        t=time.monotonic(), state=ControllerState.RUNNING, reason="", positions=ready,
        velocities=np.zeros(7), gripper=None, interventions=Interventions(), actions_left=5, chunk_id=None,
        epoch=node.controller.epoch,
    )  # fmt: skip
    node.set_instruction("go right")  # between that tick and its send
    episode = node.history.episode
    sample = SimpleNamespace(value=ready)
    node._record_history(time.monotonic(), sample, planned, sent=True)  # its send, after the switch
    node.history.reset()  # a hold tick while the new instruction's first chunk is computed
    assert node.history.episode == episode  # ... begins no second episode
