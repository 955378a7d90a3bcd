"""apt_msgs: the interfaces build, import, and cross a process boundary over real DDS intact."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros


def test_interfaces_have_documented_fields() -> None:
    from apt_msgs.action import FollowInstruction
    from apt_msgs.msg import ActionChunk, PolicyStatus
    from apt_msgs.srv import SetInstruction

    chunk_fields = set(ActionChunk.get_fields_and_field_types())
    assert chunk_fields == {
        "header", "chunk_id", "instruction", "action_names", "dt", "horizon", "action_dim", "actions",
        "inference_time_ms", "backend", "client_id", "request_id", "error",
    }  # fmt: skip
    assert ActionChunk.get_fields_and_field_types()["actions"] == "sequence<float>"
    from apt_msgs.msg import ObservationRequest

    assert set(ObservationRequest.get_fields_and_field_types()) == {
        "header", "client_id", "request_id", "epoch", "instruction", "camera_names", "image_encoding",
        "image_height", "image_width", "image_sizes", "image_data", "state", "prefix_len", "prefix", "noise",
        "history_steps", "history_states", "history_actions", "history_valid",
    }  # fmt: skip
    assert ObservationRequest.get_fields_and_field_types()["history_valid"] == "sequence<boolean>"
    from apt_msgs.msg import ChunkInputs

    assert set(ChunkInputs.get_fields_and_field_types()) == {
        "header", "chunk_id", "state", "action_dim", "prefix_rows", "prefix", "history_steps", "state_dim",
        "history_states", "history_actions", "history_valid",
    }  # fmt: skip
    s = PolicyStatus
    assert [s.IDLE, s.RUNNING, s.HOLDING, s.PAUSED, s.FAULT] == [0, 1, 2, 3, 4]
    assert set(SetInstruction.Request.get_fields_and_field_types()) == {"instruction"}
    assert set(SetInstruction.Response.get_fields_and_field_types()) == {"accepted", "message"}
    assert set(FollowInstruction.Goal.get_fields_and_field_types()) == {"instruction", "duration"}
    feedback_fields = set(FollowInstruction.Feedback.get_fields_and_field_types())
    assert feedback_fields == {"elapsed", "chunks_executed", "state"}
    assert set(FollowInstruction.Result.get_fields_and_field_types()) == {"success", "message"}


def _chunk():
    from apt_msgs.msg import ActionChunk

    rng = np.random.default_rng(0)
    msg = ActionChunk()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000000, 123456789
    msg.header.frame_id = "fr3_link0"
    msg.chunk_id = 2**40 + 7
    msg.instruction = "reach the red block — ünïcode ok"
    msg.action_names = [f"fr3_joint{i}" for i in range(1, 8)] + ["gripper"]
    msg.dt = 0.02
    msg.horizon, msg.action_dim = 16, 8
    msg.actions = rng.standard_normal(16 * 8).astype(np.float32).tolist()
    msg.inference_time_ms = 12.5
    msg.backend = "onnxruntime"
    return msg


def _status():
    from apt_msgs.msg import PolicyStatus

    msg = PolicyStatus()
    msg.header.stamp.sec = 42
    msg.state = PolicyStatus.HOLDING
    msg.instruction = "reach the blue block"
    msg.backend, msg.model_id = "tensorrt", "demo-stage2@abc123"
    msg.inference_latency_p50_ms, msg.inference_latency_p99_ms = 20.25, 31.5
    msg.control_rate_hz = 99.75
    msg.actions_left = 5
    msg.ticks, msg.missed_ticks, msg.chunks_produced, msg.safety_interventions = 6000, 1, 300, 17
    msg.last_fault = "camera 'wrist' stale: 0.31 s > 0.2 s"
    return msg


def test_chunk_and_status_cross_processes_intact(ros_env, processes) -> None:
    import rclpy
    from apt_msgs.msg import ActionChunk, PolicyStatus
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

    processes.start("peer", [sys.executable, str(Path(__file__).with_name("msg_peer.py"))])
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("apt_msg_test", context=ctx)
    executor = rclpy.executors.SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    qos = QoSProfile(
        depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
    )
    got: dict[str, object] = {}
    node.create_subscription(ActionChunk, "/apt_test/chunk_out", lambda m: got.setdefault("chunk", m), qos)
    node.create_subscription(PolicyStatus, "/apt_test/status_out", lambda m: got.setdefault("status", m), qos)
    chunk_pub = node.create_publisher(ActionChunk, "/apt_test/chunk_in", qos)
    status_pub = node.create_publisher(PolicyStatus, "/apt_test/status_in", qos)
    sent_chunk, sent_status = _chunk(), _status()
    try:
        deadline = time.monotonic() + 30.0
        while len(got) < 2 and time.monotonic() < deadline:
            # Publish until the peer has discovered us and echoed back (discovery takes ~1 s).
            if chunk_pub.get_subscription_count() and "chunk" not in got:
                chunk_pub.publish(sent_chunk)
            if status_pub.get_subscription_count() and "status" not in got:
                status_pub.publish(sent_status)
            executor.spin_once(timeout_sec=0.2)
        assert set(got) == {"chunk", "status"}, processes.output("peer")
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)

    chunk = got["chunk"]
    for field in ActionChunk.get_fields_and_field_types():
        if field != "actions":
            assert getattr(chunk, field) == getattr(sent_chunk, field), field
    # float32 on the wire: values must be identical after rounding to float32.
    sent = np.asarray(sent_chunk.actions, np.float32)
    np.testing.assert_array_equal(np.asarray(chunk.actions, np.float32), sent)
    assert len(chunk.actions) == chunk.horizon * chunk.action_dim
    status = got["status"]
    for field in PolicyStatus.get_fields_and_field_types():
        assert getattr(status, field) == getattr(sent_status, field), field


def test_service_and_action_types_work_in_rclpy(ros_env) -> None:
    """SetInstruction and FollowInstruction are usable by rclpy's service and action machinery."""
    import threading

    import rclpy
    from apt_msgs.action import FollowInstruction
    from apt_msgs.srv import SetInstruction
    from rclpy.action import ActionClient, ActionServer
    from rclpy.executors import MultiThreadedExecutor

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    server = rclpy.create_node("apt_types_server", context=ctx)
    client = rclpy.create_node("apt_types_client", context=ctx)

    def on_set(req, resp):
        resp.accepted = bool(req.instruction)
        resp.message = "ok" if req.instruction else "empty instruction"
        return resp

    def on_goal(handle):
        fb = FollowInstruction.Feedback(elapsed=0.5, chunks_executed=3, state=1)
        handle.publish_feedback(fb)
        handle.succeed()
        return FollowInstruction.Result(success=True, message=f"followed '{handle.request.instruction}'")

    server.create_service(SetInstruction, "set_instruction", on_set)
    ActionServer(server, FollowInstruction, "follow_instruction", on_goal)
    executor = MultiThreadedExecutor(num_threads=2, context=ctx)
    executor.add_node(server)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        cli = client.create_client(SetInstruction, "set_instruction")
        assert cli.wait_for_service(timeout_sec=10.0)
        ok = cli.call(SetInstruction.Request(instruction="reach the red block"), timeout_sec=10.0)
        refused = cli.call(SetInstruction.Request(instruction=""), timeout_sec=10.0)
        assert (ok.accepted, refused.accepted, refused.message) == (True, False, "empty instruction")

        feedback = []
        ac = ActionClient(client, FollowInstruction, "follow_instruction")
        assert ac.wait_for_server(timeout_sec=10.0)
        goal_future = ac.send_goal_async(
            FollowInstruction.Goal(instruction="reach the blue block", duration=1.0),
            feedback_callback=lambda m: feedback.append(m.feedback),
        )
        deadline = time.monotonic() + 10.0
        while not goal_future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        handle = goal_future.result()
        assert handle.accepted
        result_future = handle.get_result_async()
        while not result_future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        result = result_future.result().result
        assert result.success and result.message == "followed 'reach the blue block'"
        assert [f.chunks_executed for f in feedback] == [3]
    finally:
        executor.shutdown()
        rclpy.try_shutdown(context=ctx)
