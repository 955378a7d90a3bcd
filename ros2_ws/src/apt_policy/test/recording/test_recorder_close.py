"""apt-record's Recorder in this process: close() writes everything queued, a frame cv2 cannot encode does
not end the encoder thread. The recorder against real publishing processes is tests/test_recording.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

import rclpy
from apt_policy.data.bag import qos_profile, read_messages
from rclpy.parameter import Parameter
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import String

pytestmark = pytest.mark.ros

CAMERA = "/camera/camera/color/image_raw"


@pytest.fixture
def recorder(ros_env, tmp_path: Path):
    from apt_policy.recording.recorder import Recorder

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    overrides = [
        Parameter("output", value=str(tmp_path / "bag")),
        Parameter("topics", value=["/nobody/publishes:std_msgs/msg/String"]),
        Parameter("cameras", value=[CAMERA]),
        Parameter("camera_width", value=1),  # a 1-row frame resized to 1 px wide has height 0: cv2.error
        Parameter("queue_size", value=5000),
    ]
    rec = Recorder(context=ctx, parameter_overrides=overrides)
    yield rec, tmp_path / "bag"
    rec.destroy_node()
    rclpy.try_shutdown(context=ctx)


def _image(height: int, width: int, value: int) -> bytes:
    msg = Image(height=height, width=width, encoding="rgb8", step=3 * width)
    msg.data = np.full(height * width * 3, value, np.uint8).tobytes()
    return serialize_message(msg)


def test_close_writes_the_whole_backlog_and_the_metadata(recorder) -> None:
    rec, bag = recorder
    rec.writer_topics.append(("/chatter", "std_msgs/msg/String", [qos_profile()]))
    sent = [f"message {i}" for i in range(3000)]
    for i, text in enumerate(sent):  # faster than the writer drains them: a backlog at close
        rec.queue.put_nowait(("/chatter", 1_000_000_000 + i, serialize_message(String(data=text))))
    rec.close()
    assert [m.msg.data for m in read_messages(bag, ["/chatter"])] == sent
    assert (bag / "metadata.yaml").is_file()
    stats = rec.stats()
    assert stats["close_s"] is not None and stats["close_s"] >= 0.0
    assert stats["backlog_at_close"] > 0


def test_a_frame_cv2_cannot_encode_is_an_error_and_the_next_frame_is_recorded(recorder) -> None:
    rec, bag = recorder
    rec.writer_topics.append((f"{CAMERA}/compressed", "sensor_msgs/msg/CompressedImage", [qos_profile()]))
    rec.frames.put((CAMERA, 1_000_000_000, _image(1, 640, 10)))  # resized to 1 x 0: cv2.error
    rec.frames.put((CAMERA, 2_000_000_000, _image(48, 64, 200)))  # resized to 1 x 1
    rec.close()
    frames = list(read_messages(bag, [f"{CAMERA}/compressed"]))
    assert [m.t_ns for m in frames] == [2_000_000_000]
    assert frames[0].msg.format == "jpeg"
    assert len(rec.errors) == 1 and CAMERA in rec.errors[0]
