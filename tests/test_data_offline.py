"""The offline data tools on synthetic recordings (no ROS): bag cap, episodes from every source, export.

``python tests/test_data_offline.py OUT`` writes the synthetic bag and its LeRobotDataset export to OUT (to
load it with lerobot in another environment).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mcap")
pytest.importorskip("rosbags")

from apt_policy.data.bag import BagWriter, SplitPolicy, bag_files, read_messages, topics_of
from apt_policy.data.episodes import EXECUTING, SUCCEEDED, find_episodes
from apt_policy.data.lerobot import ExportOptions, export_lerobot, read_lerobot
from apt_policy.data.messages import Messages

T0 = 1_800_000_000 * 10**9
JOINTS = [f"fr3_joint{i}" for i in range(1, 8)]
CAMERA = "/camera/camera/color/image_raw/compressed"
TYPES = {
    "/apt_policy/instruction": "std_msgs/msg/String",
    "/apt_policy/takeover": "std_msgs/msg/Bool",
    "/apt_policy/status": "apt_msgs/msg/PolicyStatus",
    "/apt_policy/follow_instruction/_action/status": "action_msgs/msg/GoalStatusArray",
    "/franka/joint_states": "sensor_msgs/msg/JointState",
    "/fr3_arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    CAMERA: "sensor_msgs/msg/CompressedImage",
}


def _status(m: Messages, t: int, state: int, text: str) -> bytes:
    return m.cdr(
        TYPES["/apt_policy/status"],
        header=m.header(t),
        state=state,
        instruction=text,
        backend="",
        model_id="",
        inference_latency_p50_ms=0.0,
        inference_latency_p99_ms=0.0,
        control_rate_hz=0.0,
        actions_left=0,
        ticks=0,
        missed_ticks=0,
        chunks_produced=0,
        safety_interventions=0,
        last_fault="",
    )


def _goal(m: Messages, t: int, code: int) -> bytes:
    info = m.new(
        "action_msgs/msg/GoalInfo",
        goal_id=m.new("unique_identifier_msgs/msg/UUID", uuid=np.arange(16, dtype=np.uint8)),
        stamp=m.header(t).stamp,
    )
    status = m.new("action_msgs/msg/GoalStatus", goal_info=info, status=code)
    return m.cdr(TYPES["/apt_policy/follow_instruction/_action/status"], status_list=[status])


def synthetic_bag(path: Path, camera_from_s: float = 0.0) -> Path:
    """6 s at 50 Hz: instruction A at 0 s (takeover 1.0-1.5 s), B at 2 s, a FollowInstruction goal C
    (status only, no instruction message) executing at 4 s and succeeding at 5.5 s, then IDLE; ~/status
    at 10 Hz naming each (IDLE just after B: the node has not taken it yet); camera frames at 10 Hz from
    ``camera_from_s`` on (a recorder that subscribed to the camera late)."""
    import cv2

    m = Messages(TYPES.values())
    items: list[tuple[int, str, bytes]] = []
    s = 10**9
    items.append(
        (T0, "/apt_policy/instruction", m.cdr(TYPES["/apt_policy/instruction"], data="reach the red block"))
    )
    items.append((T0 + s, "/apt_policy/takeover", m.cdr(TYPES["/apt_policy/takeover"], data=True)))
    items.append((T0 + 3 * s // 2, "/apt_policy/takeover", m.cdr(TYPES["/apt_policy/takeover"], data=False)))
    items.append(
        (
            T0 + 2 * s,
            "/apt_policy/instruction",
            m.cdr(TYPES["/apt_policy/instruction"], data="go to the blue block"),
        )
    )
    items.append(
        (T0 + 4 * s, "/apt_policy/follow_instruction/_action/status", _goal(m, T0 + 4 * s, EXECUTING))
    )
    for k in range(60):  # ~/status at 10 Hz; just after an instruction it still shows the node's old state
        t = T0 + k * s // 10 + 5 * 10**6
        text = ("reach the red block", "go to the blue block", "touch the green cube", "")[min(k // 20, 3)]
        text = "" if k == 20 or k >= 55 else text
        items.append((t, "/apt_policy/status", _status(m, t, 1 if text else 0, text)))
    items.append(
        (T0 + 11 * s // 2, "/apt_policy/follow_instruction/_action/status", _goal(m, T0 + 5 * s, SUCCEEDED))
    )
    for k in range(300):
        t = T0 + k * s // 50
        q = np.full(7, 0.01 * k)
        items.append(
            (
                t,
                "/franka/joint_states",
                m.cdr(
                    TYPES["/franka/joint_states"],
                    header=m.header(t),
                    name=JOINTS,
                    position=q,
                    velocity=np.zeros(0),
                    effort=np.zeros(0),
                ),
            )
        )
        point = m.new(
            "trajectory_msgs/msg/JointTrajectoryPoint",
            positions=q + 0.5,
            velocities=np.zeros(7),
            accelerations=np.zeros(0),
            effort=np.zeros(0),
            time_from_start=m.new("builtin_interfaces/msg/Duration", sec=0, nanosec=10**7),
        )
        traj = m.cdr(
            TYPES["/fr3_arm_controller/joint_trajectory"],
            header=m.header(0),
            joint_names=JOINTS,
            points=[point],
        )
        items.append((t, "/fr3_arm_controller/joint_trajectory", traj))
        if k % 5 == 0 and k / 50 >= camera_from_s:
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, :, 1] = 4 * (k // 5)  # frame number in the green channel
            _, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            items.append(
                (
                    t,
                    CAMERA,
                    m.cdr(
                        TYPES[CAMERA], header=m.header(t), format="jpeg", data=np.frombuffer(jpg, np.uint8)
                    ),
                )
            )
    with BagWriter(path) as writer:
        for topic, type_name in TYPES.items():
            writer.add_topic(topic, type_name)
        for t, topic, data in sorted(items, key=lambda i: i[0]):
            writer.write(topic, t, data)
    return path


def test_episodes_from_instructions_takeover_and_the_action(tmp_path) -> None:
    episodes = find_episodes(synthetic_bag(tmp_path / "bag"))
    assert [(e.instruction, e.source, e.outcome) for e in episodes] == [
        ("reach the red block", "instruction", "preempted"),
        ("go to the blue block", "instruction", "preempted"),
        ("touch the green cube", "action", "succeeded"),
    ]
    assert episodes[1].start_ns == T0 + 2 * 10**9 and episodes[0].end_ns == episodes[1].start_ns
    assert episodes[2].end_ns == T0 + 11 * 10**9 // 2
    assert episodes[0].takeover == [(T0 + 10**9, T0 + 3 * 10**9 // 2)] and not episodes[1].takeover


def test_a_status_that_overtakes_its_instruction_does_not_split_the_episode() -> None:
    """The node's status naming the new instruction can reach the recorder before the instruction."""
    from types import SimpleNamespace

    from apt_policy.data.bag import Message
    from apt_policy.data.episodes import episodes_from_messages

    def status(t_ns: int, text: str) -> Message:
        return Message("/apt_policy/status", "", t_ns, SimpleNamespace(instruction=text, state=1))

    def instruction(t_ns: int, text: str) -> Message:
        return Message("/apt_policy/instruction", "", t_ns, SimpleNamespace(data=text))

    stream = [instruction(0, "a"), status(10**8, "a"), status(2 * 10**8, "a")]
    stream += [status(300_000_000, "b"), instruction(300_140_000, "b")]
    stream += [status(k * 10**8, "b") for k in range(4, 20)]
    stream += [status(2 * 10**9, "b"), instruction(2_000_100_000, "b")]  # a repeat long after: a restart
    first, second, third = episodes_from_messages(stream)
    assert [e.instruction for e in (first, second, third)] == ["a", "b", "b"]
    assert (first.outcome, first.end_ns) == ("preempted", 300_140_000)
    assert (second.start_ns, second.source) == (300_140_000, "instruction")
    assert (second.end_ns, third.start_ns) == (2_000_100_000, 2_000_100_000)


def test_a_silent_node_ends_its_episode_at_its_last_status() -> None:
    from types import SimpleNamespace

    from apt_policy.data.bag import Message
    from apt_policy.data.episodes import episodes_from_messages

    def status(t: float, text: str) -> Message:
        return Message(
            "/apt_policy/status",
            "",
            round(t * 1e9),
            SimpleNamespace(instruction=text, state=1 if text else 0),
        )

    stream = [Message("/apt_policy/instruction", "", 0, SimpleNamespace(data="a")), status(0.05, "")]
    stream += [status(0.1 * k, "a") for k in range(1, 20)] + [status(5.0, ""), status(5.1, "")]
    stream += [Message("/apt_policy/instruction", "", 6 * 10**9, SimpleNamespace(data="b"))]
    stream += [status(6.0 + 0.1 * k, "b") for k in range(1, 10)]
    first, second = episodes_from_messages(stream)
    assert (first.outcome, first.end_ns) == (
        "stopped",
        round(1.9e9),
    )  # restarted node: ends at its last status
    assert (second.instruction, second.outcome) == ("b", "end_of_recording")


def test_export_round_trips_actions_frames_and_takeover(tmp_path) -> None:
    bag = synthetic_bag(tmp_path / "bag")
    result = export_lerobot(bag, tmp_path / "ds", ExportOptions(fps=10.0, cameras={CAMERA: "front"}))
    ds = read_lerobot(tmp_path / "ds")
    assert result.episodes == 3 and ds["info"]["total_frames"] == result.frames == 20 + 20 + 15
    assert ds["tasks"] == {"reach the red block": 0, "go to the blue block": 1, "touch the green cube": 2}
    data = ds["data"]
    k = np.arange(result.frames)
    # frame i of an episode at start + i/10 s: the newest state (50 Hz, 0.01 rad per sample) at that time
    starts = np.repeat([0, 100, 200], [20, 20, 15])
    np.testing.assert_allclose(
        data["observation.state"][:, 0], 0.01 * (starts + 5 * data["frame_index"]), atol=1e-6
    )
    np.testing.assert_allclose(data["action"], data["observation.state"] + 0.5, atol=1e-6)
    assert data["index"].tolist() == k.tolist()
    assert data["intervention"].tolist() == [0] * 10 + [1] * 5 + [0] * 40
    green = ds["videos"]["observation.images.front"][:, :, :, 1].mean(axis=(1, 2))
    np.testing.assert_allclose(green, 4 * (starts // 5 + data["frame_index"]), atol=3)
    ep = ds["episodes"][1]
    assert (ep["dataset_from_index"], ep["dataset_to_index"], ep["length"]) == (20, 40, 20)
    assert ep["videos/observation.images.front/from_timestamp"] == pytest.approx(2.0)


def test_export_leaves_out_frames_from_before_the_first_camera_image(tmp_path) -> None:
    """The camera's first frame 0.25 s into the first episode: that episode starts at its first grid point
    with an image at or before it (0.3 s), never with an image from the future; the others are whole."""
    bag = synthetic_bag(tmp_path / "bag", camera_from_s=0.25)
    result = export_lerobot(bag, tmp_path / "ds", ExportOptions(fps=10.0, cameras={CAMERA: "front"}))
    ds = read_lerobot(tmp_path / "ds")
    assert result.frames == 17 + 20 + 15
    first = ds["episodes"][0]
    assert first["length"] == 17 and first["apt/first_frame_ns"] == T0 + 3 * 10**8
    assert first["apt/start_ns"] == T0 and ds["episodes"][1]["apt/first_frame_ns"] == T0 + 2 * 10**9
    data = ds["data"]
    green = ds["videos"]["observation.images.front"][:17, :, :, 1].mean(axis=(1, 2))
    np.testing.assert_allclose(green, 4 * (3 + data["frame_index"][:17]), atol=3)  # the image at 0.3 s on
    np.testing.assert_allclose(data["observation.state"][:17, 0], 0.01 * (15 + 5 * data["frame_index"][:17]))
    with pytest.raises(ValueError, match="no messages on camera topic"):
        export_lerobot(bag, tmp_path / "none", ExportOptions(fps=10.0, cameras={"/no/camera": "front"}))


def test_the_cap_deletes_the_oldest_files_and_the_rest_stays_readable(tmp_path) -> None:
    m = Messages(["std_msgs/msg/String"])
    rng = np.random.default_rng(0)
    with BagWriter(tmp_path / "bag", SplitPolicy(max_file_bytes=60_000, max_total_bytes=200_000)) as writer:
        writer.add_topic("/s", "std_msgs/msg/String")
        for i in range(4000):
            writer.write("/s", T0 + i * 10**6, m.cdr("std_msgs/msg/String", data=rng.bytes(60).hex()))
    files = bag_files(tmp_path / "bag")
    assert len(writer.deleted) >= 3 and len(files) >= 2
    on_disk = sum(p.stat().st_size for p in (tmp_path / "bag").glob("*.mcap"))
    assert on_disk <= 200_000
    assert all(p.stat().st_size <= 60_000 * 1.1 for p in files)
    times = [msg.t_ns for msg in read_messages(tmp_path / "bag")]
    assert times[-1] == T0 + 3999 * 10**6 and times == sorted(times) and times[0] > T0
    assert topics_of(tmp_path / "bag")["/s"][1] == len(times)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    export_lerobot(synthetic_bag(out / "bag"), out / "dataset", ExportOptions(cameras={CAMERA: "front"}))
    print(out / "dataset")
