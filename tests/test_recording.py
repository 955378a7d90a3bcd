"""The recorder over real DDS, and the offline tools on what it wrote.

One recording is made per module: fake_franka, fake_camera, the policy node (tiny random export) and
``apt-record`` (split at 0.25 MB) as separate processes; this test sends two instructions and a takeover
interval. The tests then read the real MCAP files back with rosbags and the mcap reader, cut episodes,
export a LeRobotDataset v3.0 and replay the chunks through the same / a perturbed model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("apt_msgs")
pytest.importorskip("mcap")
pytest.importorskip("rosbags")

import rclpy
from apt_msgs.msg import PolicyStatus
from apt_policy.data.bag import bag_files, read_messages, topics_of
from apt_policy.data.episodes import find_episodes
from apt_policy.data.lerobot import ExportOptions, export_lerobot, read_lerobot
from apt_policy.data.messages import decode_jpeg, stamp_ns
from apt_policy.data.replay import ReplayOptions, format_table, replay, write_replayed
from apt_policy.ros.qos import EVENTS
from apt_policy.runtime.load import load_policy
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import Bool, String

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(600)]

SIM_YAML = Path(__file__).resolve().parents[1] / "ros2_ws/src/apt_policy/config/sim.yaml"
CAMERA = "/camera/camera/color/image_raw/compressed"
FIRST, SECOND = "reach the red block", "reach the blue block"
SPLIT_MB = 0.25
EXPECTED = {
    "/franka/joint_states": "sensor_msgs/msg/JointState",
    CAMERA: "sensor_msgs/msg/CompressedImage",
    "/apt_policy/instruction": "std_msgs/msg/String",
    "/apt_policy/action_chunk": "apt_msgs/msg/ActionChunk",
    "/apt_policy/chunk_inputs": "apt_msgs/msg/ChunkInputs",
    "/apt_policy/status": "apt_msgs/msg/PolicyStatus",
    "/fr3_arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
    "/apt_policy/takeover": "std_msgs/msg/Bool",
}


def _wait(cond, timeout: float, what: str, procs=None) -> None:
    end = time.monotonic() + timeout
    while not cond():
        for name, proc, _ in procs.procs if procs else []:
            assert proc.poll() is None, f"{name} exited:\n{procs.output(name)[-3000:]}"
        assert time.monotonic() < end, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def _root_conftest():
    """The repository's conftest.py by path: in a whole-suite run ``import conftest`` finds another one."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "apt_root_conftest", Path(__file__).parents[1] / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recording(tmp_path_factory, tiny_export: Path):
    """The bag directory of one recorded rollout (see the module docstring) and its recorder summary."""
    ProcessGroup = _root_conftest().ProcessGroup  # the shared fixture's process handling, at module scope

    root = tmp_path_factory.mktemp("recording")
    env = {
        **os.environ,
        "ROS_DOMAIN_ID": str(1 + (os.getpid() * 7 + 57) % 100),
        "ROS_LOG_DIR": str(root / "ros_log"),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "PYTHONUNBUFFERED": "1",
    }
    saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    os.environ.update({k: env[k] for k in saved})
    procs = ProcessGroup(env, root)
    bag = root / "bag"
    rclpy.init()
    node = rclpy.create_node("recording_test")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    states: list[int] = []
    node.create_subscription(PolicyStatus, "/apt_policy/status", lambda m: states.append(m.state), EVENTS)
    instruction = node.create_publisher(String, "/apt_policy/instruction", EVENTS)
    takeover = node.create_publisher(Bool, "/apt_policy/takeover", EVENTS)

    def spin_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.02)

    try:
        procs.start("fake_franka", [sys.executable, "-m", "apt_policy.sim.fake_franka"])
        procs.start("fake_camera", [sys.executable, "-m", "apt_policy.sim.fake_camera"])
        procs.start(
            "policy_node",
            ["apt-policy-node", "--ros-args", "--params-file", str(SIM_YAML), "-p", f"model:={tiny_export}"],
        )
        rec_args = ["--ros-args", "-p", f"output:={bag}", "-p", f"max_file_mb:={SPLIT_MB}"]
        procs.start("recorder", [sys.executable, "-m", "apt_policy.recording", *rec_args])

        def ready() -> bool:
            executor.spin_once(timeout_sec=0.02)
            return (
                bool(states)
                and instruction.get_subscription_count() >= 2
                and takeover.get_subscription_count() >= 1
            )

        _wait(ready, 90.0, "the node (IDLE) and the recorder", procs)
        spin_for(1.0)  # the recorder subscribes to the node's topics (0.2 s discovery period)
        instruction.publish(String(data=FIRST))
        spin_for(2.0)
        takeover.publish(Bool(data=True))
        spin_for(1.0)
        takeover.publish(Bool(data=False))
        spin_for(1.0)
        instruction.publish(String(data=SECOND))
        spin_for(3.0)
        recorder = next(p for n, p, _ in procs.procs if n == "recorder")
        recorder.send_signal(signal.SIGINT)
        recorder.wait(120)  # close() writes its whole backlog (its summary's close_s); a slow VM takes long
        summary = procs.output("recorder")
    finally:
        procs.stop_all()
        node.destroy_node()
        rclpy.try_shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    line = next(x for x in summary.splitlines() if x.startswith("[apt_recorder] summary: "))
    return bag, json.loads(line.split(": ", 1)[1])


def test_every_topic_is_recorded_with_its_ros2_schema(recording) -> None:
    bag, summary = recording
    topics = topics_of(bag)  # rosbags' AnyReader: metadata.yaml + the MCAP files
    for topic, type_name in EXPECTED.items():
        assert topics.get(topic, (None, 0))[0] == type_name, f"{topic}: {topics.get(topic)}"
        assert topics[topic][1] > 0, topic
    assert summary["dropped"] == 0 and not summary["errors"]
    from mcap.reader import make_reader

    schemas = {}
    for path in bag_files(bag):
        with path.open("rb") as f:
            reader = make_reader(f)
            assert reader.get_header().profile == "ros2"
            for schema in reader.get_summary().schemas.values():
                schemas[schema.name] = schema
    chunk = schemas["apt_msgs/msg/ActionChunk"]
    assert chunk.encoding == "ros2msg"
    assert b"float32[] actions" in chunk.data and b"MSG: std_msgs/Header" in chunk.data
    first = next(read_messages(bag, [CAMERA]))
    assert first.msg.format == "jpeg" and decode_jpeg(first.msg.data).shape == (480, 640, 3)


def test_split_by_size_gives_several_files_under_the_limit(recording) -> None:
    bag, _ = recording
    files = bag_files(bag)
    assert len(files) >= 2
    for path in files[:-1]:
        assert path.stat().st_size <= SPLIT_MB * 1e6 * 1.05, path  # one zstd chunk of slack at most
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:  # the plain rosbag2 reader too
        assert reader.message_count == sum(c for _, c in topics_of(bag).values())


def test_episodes_start_at_instruction_changes_and_carry_the_takeover(recording) -> None:
    bag, _ = recording
    episodes = find_episodes(bag)
    sent = [m.t_ns for m in read_messages(bag, ["/apt_policy/instruction"])]
    assert [e.instruction for e in episodes[:2]] == [FIRST, SECOND]
    assert [e.start_ns for e in episodes[:2]] == sent
    assert episodes[0].outcome == "preempted" and episodes[0].end_ns == episodes[1].start_ns
    assert len(episodes[0].takeover) == 1 and not episodes[1].takeover
    a, b = episodes[0].takeover[0]
    assert 0.8 < (b - a) * 1e-9 < 1.6


def test_export_round_trips_frames_and_actions(recording, tmp_path) -> None:
    bag, _ = recording
    result = export_lerobot(bag, tmp_path / "ds", ExportOptions(fps=10.0, cameras={CAMERA: "front"}))
    ds = read_lerobot(tmp_path / "ds")
    info = ds["info"]
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == result.frames
    assert set(ds["tasks"]) == {FIRST, SECOND}
    frames = ds["videos"]["observation.images.front"]
    assert frames.shape == (result.frames, 480, 640, 3)
    episodes = find_episodes(bag)
    trajectories = sorted(
        ((m.t_ns, m.msg) for m in read_messages(bag, ["/fr3_arm_controller/joint_trajectory"])),
        key=lambda item: item[0],
    )
    images = [(m.t_ns, m.msg) for m in read_messages(bag, [CAMERA])]
    data = ds["data"]
    for row in ds["episodes"]:
        ep = episodes[row["episode_index"]]
        assert row["tasks"].tolist() == [ep.instruction]
        for i in range(row["dataset_from_index"], row["dataset_to_index"]):
            t = int(row["apt/first_frame_ns"]) + round(data["frame_index"][i] * 1e8)
            assert t >= ep.start_ns
            latest = [msg for ts, msg in trajectories if ts <= t]
            if latest:
                np.testing.assert_allclose(data["action"][i], latest[-1].points[0].positions, atol=1e-6)
            image = decode_jpeg([msg for ts, msg in images if ts <= t][-1].data)
            assert np.abs(frames[i].astype(float) - image).mean() < 4.0  # h264 crf 18 on the JPEG frame
    takeover_frames = int(data["intervention"].sum())
    assert 7 <= takeover_frames <= 16  # ~1 s at 10 fps


def _perturbed(export: Path, out: Path, shift: float = 0.01) -> Path:
    """A copy of the export whose action normalisation is shifted: every action moves by ``shift``."""
    shutil.copytree(export, out)
    manifest = json.loads((out / "manifest.json").read_text())
    actions = manifest["normalization"]["actions"]
    for key, value in actions.items():
        if isinstance(value, list) and key != "std":
            actions[key] = [v + shift for v in value]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_replay_is_zero_for_the_same_model_and_seed_and_not_for_a_perturbed_one(
    recording, tiny_export, tmp_path
) -> None:
    bag, _ = recording
    policy = load_policy(tiny_export, backend="onnxruntime")
    opts = ReplayOptions(seed=3, max_chunks=12)
    # every chunk was recorded with its inputs; under RTC (sim.yaml) the later ones carry a committed prefix
    chunk_keys = {
        (m.msg.chunk_id, stamp_ns(m.msg.header.stamp)) for m in read_messages(bag, [opts.chunk_topic])
    }
    inputs = {
        (m.msg.chunk_id, stamp_ns(m.msg.header.stamp)): m.msg for m in read_messages(bag, [opts.inputs_topic])
    }
    assert chunk_keys and chunk_keys <= set(inputs)
    assert any(inputs[k].prefix_rows > 0 for k in chunk_keys) and policy.info.rtc_inputs
    live = replay(bag, policy, opts)  # against the node's own chunks: live frames and the node's noise
    # chunks from before the recorder's first joint state or camera frame are skipped with that reason
    # (the recorder's start-up race), and only those: the first ones
    starts = ("no joint state before its stamp", "no frame before its stamp")
    assert all(any(reason in why for reason in starts) for why in live.skipped)
    first = sorted((m.t_ns, int(m.msg.chunk_id)) for m in read_messages(bag, [opts.chunk_topic]))
    expected = [f"chunk {cid}" for _, cid in first[: len(live.skipped)]]
    assert [why.split(":")[0] for why in live.skipped] == expected
    n = live.chunks
    assert n >= 4 and n + len(live.skipped) == 12 and live.max_abs > 0
    reference = write_replayed(bag, tmp_path / "reference", live, opts.chunk_topic)
    same = replay(reference, policy, opts)
    assert same.chunks == n and same.max_abs == 0.0
    assert same.per_step_max == [0.0] * same.horizon
    other_seed = replay(reference, policy, ReplayOptions(seed=4, max_chunks=12))
    assert other_seed.max_abs > 0 or policy.info.noise_scale == 0
    perturbed = load_policy(_perturbed(tiny_export, tmp_path / "perturbed"), backend="onnxruntime")
    moved = replay(reference, perturbed, opts)
    assert moved.chunks == n and moved.max_abs > 1e-3


def test_a_stateful_model_is_replayed_with_a_note_that_it_had_no_history(
    recording, tiny_export, tiny_action_prior_export
) -> None:
    """The recording of an APT node holds no executed-step history: replaying an action-prior model on it
    says so next to the figures (and in the JSON); an APT model gets no such note."""
    bag, _ = recording
    opts = ReplayOptions(seed=3, max_chunks=6)
    stateful = replay(bag, load_policy(tiny_action_prior_export, backend="onnxruntime"), opts)
    assert stateful.chunks >= 1 and len(stateful.notes) == 1
    assert "WITHOUT its history" in stateful.notes[0] and "3 history steps" in stateful.notes[0]
    assert stateful.to_json()["notes"] == stateful.notes
    assert "note: stateful model" in format_table(stateful)
    stateless = replay(bag, load_policy(tiny_export, backend="onnxruntime"), opts)
    assert stateless.notes == [] and "note:" not in format_table(stateless)
