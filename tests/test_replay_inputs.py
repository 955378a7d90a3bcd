"""apt-replay feeds each chunk the RTC prefix and executed-step history recorded with it
(apt_msgs/ChunkInputs), on a synthetic recording read back through the real MCAP writer and reader
(no ROS)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mcap")
pytest.importorskip("rosbags")

from apt_policy.core.config import ActionSemantics
from apt_policy.data.bag import BagWriter
from apt_policy.data.messages import Messages
from apt_policy.data.replay import ReplayOptions, replay
from apt_policy.runtime.policy import PolicyInfo

T0 = 1_800_000_000 * 10**9
H, A, N, K = 4, 8, 8, 3  # horizon, action dim, state dim, history steps
JOINTS = [f"fr3_joint{i}" for i in range(1, 8)]
TYPES = {
    "/apt_policy/action_chunk": "apt_msgs/msg/ActionChunk",
    "/apt_policy/chunk_inputs": "apt_msgs/msg/ChunkInputs",
    "/franka/joint_states": "sensor_msgs/msg/JointState",
    "/camera/camera/color/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
}
INFO = PolicyInfo(
    backend="numpy",
    model_id="inputs-echo",
    cameras=("front",),
    image_size=(48, 64),
    horizon=H,
    action_dim=A,
    action_names=(*JOINTS, "gripper"),
    state_names=(*JOINTS, "gripper"),
    dt=0.1,
    action_semantics=ActionSemantics(),
    steps=1,
    noise_scale=0.0,
    rtc_inputs=True,
    history_steps=K,
    family="action_prior",
)


class InputsEcho:
    """A policy whose actions are a fixed function of the state, prefix and history it is given (the state in
    the second-last row, the history summed in the last; zeros where nothing is given)."""

    def __init__(self, info: PolicyInfo) -> None:
        self.info = info

    def predict(self, images, state, instruction, noise=None, prefix=None, history=None) -> np.ndarray:
        out = np.zeros((H, A), np.float32)
        out[-2] = state
        if prefix is not None:
            out[: len(prefix)] = prefix
        if history is not None:
            out[-1] = (history.actions * history.valid[:, None]).sum(axis=0) + history.states.sum(axis=0)
        return out


def _recording(
    path: Path,
    with_inputs: tuple[bool, ...],
    fills: tuple[int, ...] | None = None,
    valid_steps: tuple[int, ...] | None = None,
    instructions: tuple[str, ...] | None = None,
) -> tuple[Path, list[np.ndarray]]:
    """One chunk per entry of ``with_inputs`` (ChunkInputs recorded for it or not), each with its frame and
    joint state just before; returns the bag and what InputsEcho computes from each chunk's inputs. Per
    chunk, optionally: its frame's grey value (``fills``, else black), its history's valid steps
    (``valid_steps``, else 2 of 3) and its instruction (else "reach")."""
    import cv2

    m = Messages(TYPES.values())
    rng = np.random.default_rng(0)
    items, expected = [], []
    for i, recorded in enumerate(with_inputs):
        fill = 0 if fills is None else fills[i]
        _, jpg = cv2.imencode(".jpg", np.full((48, 64, 3), fill, np.uint8))
        t = T0 + i * 10**9
        prefix = rng.normal(size=(2, A)).astype(np.float32)
        states, actions = (
            rng.normal(size=(K, N)).astype(np.float32),
            rng.normal(size=(K, A)).astype(np.float32),
        )
        valid = np.arange(K) >= K - (2 if valid_steps is None else valid_steps[i])
        observed = rng.normal(size=N).astype(np.float32)  # newer than the recorded joint state (zeros)
        echo = InputsEcho(INFO).predict(
            None, observed, "", prefix=prefix, history=_history(states, actions, valid)
        )
        expected.append(echo)
        frame = m.cdr(
            TYPES["/camera/camera/color/image_raw/compressed"],
            header=m.header(t - 10**6),
            format="jpeg",
            data=np.frombuffer(jpg, np.uint8),
        )
        joints = m.cdr(
            TYPES["/franka/joint_states"],
            header=m.header(t - 10**6),
            name=JOINTS,
            position=np.zeros(7),
            velocity=np.zeros(0),
            effort=np.zeros(0),
        )
        chunk = m.cdr(
            TYPES["/apt_policy/action_chunk"],
            header=m.header(t),
            chunk_id=i + 1,
            instruction="reach" if instructions is None else instructions[i],
            action_names=list(INFO.action_names),
            dt=0.1,
            horizon=H,
            action_dim=A,
            actions=echo.reshape(-1),
            inference_time_ms=1.0,
            backend="numpy",
            client_id="",
            request_id=0,
            error="",
        )
        items += [(t - 10**6, "/camera/camera/color/image_raw/compressed", frame)]
        items += [(t - 10**6, "/franka/joint_states", joints), (t + 2, "/apt_policy/action_chunk", chunk)]
        if recorded:
            inputs = m.cdr(
                TYPES["/apt_policy/chunk_inputs"],
                header=m.header(t),
                chunk_id=i + 1,
                state=observed,
                action_dim=A,
                prefix_rows=2,
                prefix=prefix.reshape(-1),
                history_steps=K,
                state_dim=N,
                history_states=states.reshape(-1),
                history_actions=actions.reshape(-1),
                history_valid=valid,
            )
            items.append((t + 1, "/apt_policy/chunk_inputs", inputs))
    with BagWriter(path) as writer:
        for topic, type_name in TYPES.items():
            writer.add_topic(topic, type_name)
        for t, topic, data in sorted(items, key=lambda item: item[0]):
            writer.write(topic, t, data)
    return path, expected


def _history(states, actions, valid):
    from apt_policy.runtime.policy import History

    return History(states, actions, valid)


def test_each_chunk_is_replayed_with_its_recorded_state_prefix_and_history(tmp_path) -> None:
    bag, expected = _recording(tmp_path / "bag", (True, True, True))
    result = replay(bag, InputsEcho(INFO), ReplayOptions())
    assert result.chunks == 3 and result.max_abs == 0.0 and result.notes == []
    for (_, _, out), want in zip(result.replayed, expected, strict=True):
        np.testing.assert_array_equal(out, want)


def test_a_chunk_without_recorded_inputs_is_replayed_as_an_episode_start_and_noted(tmp_path) -> None:
    bag, _ = _recording(tmp_path / "bag", (True, False, True))
    result = replay(bag, InputsEcho(INFO), ReplayOptions())
    assert result.chunks == 3 and result.max_abs > 0.1
    np.testing.assert_array_equal(
        result.replayed[1][2], np.zeros((H, A), np.float32)
    )  # no prefix, no history
    assert len(result.notes) == 1 and "WITHOUT its history for 1 of 3 chunks" in result.notes[0]


def test_a_model_without_rtc_inputs_or_history_gets_only_the_recorded_state(tmp_path) -> None:
    bag, expected = _recording(tmp_path / "bag", (True,))
    plain = replay(bag, InputsEcho(replace(INFO, rtc_inputs=False, history_steps=0)), ReplayOptions())
    want = np.zeros((H, A), np.float32)
    want[-2] = expected[0][-2]  # the state the node observed, not the older recorded joint state (zeros)
    np.testing.assert_array_equal(plain.replayed[0][2], want)
    assert plain.notes == []


class StartViewEcho(InputsEcho):
    """InputsEcho for a model with a ``front@start`` view; records the grey value of both views per call."""

    def __init__(self, info: PolicyInfo) -> None:
        super().__init__(replace(info, cameras=("front", "front@start")))
        self.views: list[tuple[int, int]] = []

    def predict(self, images, state, instruction, noise=None, prefix=None, history=None) -> np.ndarray:
        self.views.append((int(images["front"].mean().round()), int(images["front@start"].mean().round())))
        return super().predict(images, state, instruction, noise, prefix, history)


def test_a_start_view_is_replayed_as_the_node_held_it(tmp_path) -> None:
    """The first chunk of each episode gives its frame to the later ones; an episode starts again where the
    recorded history holds fewer steps than the chunk before (a hold, an activation) or the instruction
    changes."""
    bag, _ = _recording(
        tmp_path / "bag",
        (True,) * 6,
        fills=(10, 60, 110, 160, 210, 250),
        valid_steps=(0, 3, 3, 0, 3, 3),
        instructions=("reach", "reach", "reach", "reach", "reach", "go"),
    )
    policy = StartViewEcho(INFO)
    result = replay(bag, policy, ReplayOptions())
    assert result.chunks == 6
    assert [live for live, _ in policy.views] == [10, 60, 110, 160, 210, 250]
    assert [start for _, start in policy.views] == [10, 10, 10, 160, 160, 250]
