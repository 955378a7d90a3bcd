"""The policy node feeds a stateful policy (info.history_steps > 0) the commands it actually SENT, over real
DDS in one process: empty at the start, released (safety-filtered) positions rather than the proposed ones,
started again after a hold and on a new instruction."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")

from apt_msgs.msg import PolicyStatus
from apt_policy.robots.franka import FR3
from apt_policy.sim import stand_ins
from apt_policy.sim.stand_ins import hold_ready, policy_node_with_stand_in, stand_in_parameters
from apt_policy.sim.stand_ins import wait_until as _wait

pytestmark = pytest.mark.ros

READY = np.array(FR3.ready_pose)
TARGET = 0.15  # joint-1 offset every action asks for: the limits ramp the commands (the static arm's tracking
# error stays under the controller's 0.2 rad fault threshold)


def _offset(instruction: str, t: float) -> np.ndarray:
    actions = hold_ready(instruction, t, horizon=10, gripper=0.04)
    actions[:, 0] += TARGET if instruction.endswith("left") else -TARGET
    return actions


class StatefulPolicy(stand_ins.ScriptedPolicy):
    """The scripted stand-in declaring a 3-step history; records (instruction, history) per call."""

    def __init__(self) -> None:
        super().__init__(_offset, image_shape=(24, 32), latency_s=0.02, model_id="stateful-test")
        self.info = replace(self.info, history_steps=3, family="action_prior")
        self.histories: list[tuple[str, object]] = []

    def predict(self, images, state, instruction, noise=None, prefix=None, history=None):
        self.histories.append((instruction, history))
        return super().predict(images, state, instruction, noise)


@pytest.fixture
def running(ros_env, tmp_path: Path):
    policy = StatefulPolicy()
    params = stand_in_parameters(tmp_path, chunk_execution="none")
    with policy_node_with_stand_in(policy, params) as (node, probe):
        yield node, probe, policy


def _with_history(policy: StatefulPolicy, instruction: str) -> list:
    return [h for i, h in policy.histories if i == instruction and h is not None]


def test_history_is_what_was_sent_and_restarts_after_hold_and_new_instruction(running) -> None:
    node, probe, policy = running
    _wait(lambda: probe.state() == PolicyStatus.IDLE, what="IDLE")
    node.set_instruction("go left")
    _wait(lambda: len(_with_history(policy, "go left")) >= 4, what="four predictions with a history")
    hist = _with_history(policy, "go left")
    assert not hist[0].valid.any()  # the episode starts empty
    first = next(h for h in hist if h.valid.any())
    assert first.states.shape == (3, 8) and first.actions.shape == (3, 8)
    # the commands actually sent: the first one barely left the ready pose (ramped by the limits), while
    # every proposed action asked for the full offset at once
    assert 0.0 <= first.actions[first.valid][0, 0] - READY[0] < TARGET / 2
    full = next(h for h in hist if h.valid.all())
    sent = full.actions[:, 0] - READY[0]
    assert np.all(sent <= TARGET + 1e-6) and np.all(np.diff(sent) >= 0)  # oldest first, heading out
    np.testing.assert_allclose(full.states[:, :7], np.repeat(READY[None], 3, 0), atol=1e-6)  # static arm
    # a hold (camera stopped) starts the history again: nothing from before it is kept
    assert node.history is not None and node.history.snapshot().valid.all()
    probe.camera_on = False
    _wait(lambda: node.status_snapshot()["state_name"] == "HOLDING", timeout=3.0, what="HOLDING")
    time.sleep(0.05)  # a few ticks of the hold
    assert not node.history.snapshot().valid.any()
    probe.camera_on = True
    _wait(lambda: node.status_snapshot()["state_name"] == "RUNNING", what="RUNNING again")
    # a new instruction is a new episode: the full history is dropped (a command sent between the switch and
    # the first prediction for it belongs to the new episode and may be there)
    _wait(lambda: node.history.snapshot().valid.all(), what="a full history again")
    node.set_instruction("go right")
    _wait(lambda: _with_history(policy, "go right"), what="a prediction for the new instruction")
    assert _with_history(policy, "go right")[0].valid.sum() <= 1


def test_every_chunk_is_published_with_the_history_it_was_computed_from(running) -> None:
    """~/chunk_inputs (apt_msgs/ChunkInputs, what apt-record keeps for apt-replay): one per chunk, same id and
    stamp, holding exactly the history that predict() was given."""
    from apt_msgs.msg import ActionChunk, ChunkInputs
    from apt_policy.ros.qos import EVENTS

    node, probe, policy = running
    chunks: dict[int, ActionChunk] = {}
    inputs: dict[int, ChunkInputs] = {}
    probe.node.create_subscription(
        ActionChunk, "/apt_policy/action_chunk", lambda m: chunks.update({m.chunk_id: m}), EVENTS
    )
    probe.node.create_subscription(
        ChunkInputs, "/apt_policy/chunk_inputs", lambda m: inputs.update({m.chunk_id: m}), EVENTS
    )
    _wait(lambda: probe.state() == PolicyStatus.IDLE, what="IDLE")
    node.set_instruction("go left")
    _wait(lambda: len(chunks) >= 5 and set(chunks) <= set(inputs), what="five chunks and their inputs")
    given = _with_history(policy, "go left")
    valid_counts = set()
    for chunk_id, chunk in chunks.items():
        msg = inputs[chunk_id]
        assert msg.header.stamp == chunk.header.stamp
        np.testing.assert_allclose(np.array(msg.state)[:7], READY, atol=1e-6)  # the static arm's state
        assert (msg.history_steps, msg.state_dim, msg.action_dim, msg.prefix_rows) == (3, 8, 8, 0)
        valid = np.array(msg.history_valid, bool)
        actions = np.array(msg.history_actions, np.float32).reshape(3, 8)
        states = np.array(msg.history_states, np.float32).reshape(3, 8)
        matches = [
            h for h in given
            if np.array_equal(h.valid, valid) and np.array_equal(np.asarray(h.actions, np.float32), actions)
            and np.array_equal(np.asarray(h.states, np.float32), states)
        ]  # fmt: skip
        assert matches, f"chunk {chunk_id}: its inputs are no history predict() was given"
        valid_counts.add(int(valid.sum()))
    assert 0 in valid_counts and 3 in valid_counts  # from the episode start to a full history


def test_chunk_ids_keep_increasing_over_a_deactivate_and_activate(running) -> None:
    """The worker is replaced on deactivate; ActionChunk ids stay unique over the node's lifetime (the
    demo deactivates between episodes, and apt-replay pairs a chunk with its inputs by id and stamp)."""
    from apt_msgs.msg import ActionChunk
    from apt_policy.ros.qos import EVENTS
    from rclpy.lifecycle import TransitionCallbackReturn

    node, probe, _ = running
    ids: list[int] = []
    probe.node.create_subscription(
        ActionChunk, "/apt_policy/action_chunk", lambda m: ids.append(m.chunk_id), EVENTS
    )
    _wait(lambda: probe.state() == PolicyStatus.IDLE, what="IDLE")
    node.set_instruction("go left")
    _wait(lambda: len(ids) >= 3, what="three chunks")
    node.stop()
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    before = list(ids)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    node.set_instruction("go right")
    _wait(lambda: len(ids) >= len(before) + 3, what="three chunks after activate")
    assert ids == sorted(set(ids)), ids  # strictly increasing, no id used twice
    assert ids[len(before)] > before[-1]
