"""``apt-record`` / ``ros2 run apt_policy recorder``: every rollout to a rosbag2 MCAP recording.

A node of its own (its own process: recording never takes the policy node's GIL or stream thread):

* every topic of ``topics`` (``name`` or ``name:pkg/msg/Type``; the type of a bare name is taken from the
  graph) is subscribed *raw* (serialised CDR bytes, never turned into Python messages) as soon as it has a
  publisher, with the publishers' reliability / durability, and written as received;
* every raw ``sensor_msgs/Image`` topic of ``cameras`` is recorded as ``<topic>/compressed``
  (``sensor_msgs/CompressedImage``, JPEG by cv2) at ``camera_rate`` Hz, ``jpeg_quality``, optionally
  resized to ``camera_width`` pixels wide, encoded on an encoder thread;
* one writer thread cuts messages to their CDR length (:class:`~apt_policy.data.messages.CdrTrimmer`:
  the ROS wheels' rmw pads some types) and owns the :class:`~apt_policy.data.bag.BagWriter` (split by
  ``max_file_mb`` / ``max_file_s``, oldest files deleted above ``max_total_mb``). Callbacks only
  enqueue; a full queue drops the message and counts it (``~/stats``, the exit summary), never blocks.

Receive times (the bag's log times) are the system clock, ns since the epoch, like ``ros2 bag record``.
The process runs at a raised nice value (``nice``, +10): on a busy machine the policy node and the arm's
driver get the CPU first, and the recorder's queue absorbs the delay.
SIGINT closes the open file and writes metadata.yaml.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
import rclpy.executors
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import String

from apt_policy.data.bag import BagWriter, SplitPolicy, qos_profile
from apt_policy.data.messages import CdrTrimmer
from apt_policy.ros.image_cdr import CdrError, parse_image

__all__ = ["DEFAULT_CAMERAS", "DEFAULT_TOPICS", "Recorder", "main"]

# What a rollout is: inputs, the policy's outputs, what was sent to the arm, health, operator events.
DEFAULT_TOPICS = (
    "/franka/joint_states:sensor_msgs/msg/JointState",
    "/franka_gripper/joint_states:sensor_msgs/msg/JointState",
    "/apt_policy/instruction:std_msgs/msg/String",
    "/apt_policy/action_chunk:apt_msgs/msg/ActionChunk",
    "/apt_policy/chunk_inputs:apt_msgs/msg/ChunkInputs",
    "/apt_policy/status:apt_msgs/msg/PolicyStatus",
    "/fr3_arm_controller/joint_trajectory:trajectory_msgs/msg/JointTrajectory",
    "/diagnostics:diagnostic_msgs/msg/DiagnosticArray",
    "/apt_policy/takeover:std_msgs/msg/Bool",
    "/apt_policy/follow_instruction/_action/status:action_msgs/msg/GoalStatusArray",
)
DEFAULT_CAMERAS = ("/camera/camera/color/image_raw",)
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"

_PARAMS: tuple[tuple[str, Any, str], ...] = (
    ("output", "", "Bag directory to create (default: recording_<date>_<time> in the working directory)."),
    ("topics", list(DEFAULT_TOPICS), "Topics to record: name or name:pkg/msg/Type."),
    ("extra_topics", [""], "More topics (added to `topics`; e.g. RTC delay / prefix topics)."),
    ("cameras", list(DEFAULT_CAMERAS), "Raw sensor_msgs/Image topics recorded as <topic>/compressed (JPEG)."),
    ("camera_rate", 15.0, "Recorded frames per second per camera (0 = every frame)."),
    ("camera_width", 0, "Resize recorded frames to this width (0 = as received)."),
    ("jpeg_quality", 80, "JPEG quality 1-100."),
    ("max_file_mb", 256.0, "Start a new file past this size (MB; 0 = no limit)."),
    ("max_file_s", 0.0, "Start a new file past this duration (s; 0 = no limit)."),
    ("max_total_mb", 0.0, "Delete the oldest files to keep the bag under this size (MB; 0 = no cap)."),
    ("queue_size", 2000, "Messages waiting for the writer thread before new ones are dropped."),
    (
        "discovery_period",
        0.2,
        "How often (s) the graph is checked for publishers of topics not yet recorded.",
    ),
    ("nice", 10, "Raise the process's nice value by this (0 = off): the node and the arm get the CPU first."),
)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    type: str | None


def parse_topics(entries: Sequence[str]) -> list[TopicSpec]:
    """``name`` or ``name:pkg/msg/Type`` entries (blank ones ignored), de-duplicated in order."""
    out: dict[str, TopicSpec] = {}
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        name, _, type_name = entry.partition(":")
        out[name] = TopicSpec(name, type_name or None)
    return list(out.values())


def encode_jpeg(raw: bytes | memoryview, width: int, quality: int) -> tuple[float, str, bytes]:
    """A serialised sensor_msgs/Image -> (stamp s, frame_id, JPEG bytes); raises CdrError/ValueError."""
    view = parse_image(raw)
    channels = {"rgb8": 3, "bgr8": 3, "mono8": 1}.get(view.encoding)
    if channels is None:
        raise ValueError(f"encoding {view.encoding!r} not recorded (rgb8, bgr8, mono8)")
    rows = np.frombuffer(view.data, np.uint8).reshape(view.height, view.step)
    img: Any = rows[:, : view.width * channels].reshape(view.height, view.width, channels)
    if view.encoding == "rgb8":
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if width and width != view.width:
        img = cv2.resize(img, (width, round(view.height * width / view.width)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("cv2.imencode failed")
    return view.stamp_s, view.frame_id, buf.tobytes()


def message_class(type_name: str) -> Any:
    """``pkg/msg/Type`` -> the generated Python class (what rosidl_runtime_py.get_message does)."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def _qos_for(infos: Sequence[Any]) -> QoSProfile:
    """Reliable / transient-local only when every publisher offers it (otherwise they would not match)."""
    reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
    latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=100,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def _qos_record(qos: QoSProfile) -> list[dict[str, Any]]:
    return [
        qos_profile(
            reliable=qos.reliability == ReliabilityPolicy.RELIABLE,
            transient_local=qos.durability == DurabilityPolicy.TRANSIENT_LOCAL,
            depth=qos.depth,
        )
    ]


class Recorder(Node):
    """See the module docstring."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("apt_recorder", **node_kwargs)
        p = {
            name: self.declare_parameter(name, default, _descriptor(text)).value
            for name, default, text in _PARAMS
        }
        out = p["output"] or time.strftime("recording_%Y%m%d_%H%M%S")
        split = SplitPolicy(
            max_file_bytes=int(p["max_file_mb"] * 1e6),
            max_file_s=float(p["max_file_s"]),
            max_total_bytes=int(p["max_total_mb"] * 1e6),
        )
        self.writer = BagWriter(Path(out), split)
        self.camera_rate = float(p["camera_rate"])
        self.camera_width = int(p["camera_width"])
        self.jpeg_quality = int(p["jpeg_quality"])
        self.pending = {s.name: s for s in parse_topics([*p["topics"], *p["extra_topics"]])}
        self.cameras = [c for c in p["cameras"] if c]
        for cam in self.cameras:
            self.pending[cam] = TopicSpec(cam, IMAGE)
        self.subscriptions_by_topic: dict[str, Any] = {}
        self.writer_topics: list[
            tuple[str, str, list[dict[str, Any]]]
        ] = []  # (name, type, qos): the writer thread declares
        self.queue: queue.Queue[tuple[str, int, bytes] | None] = queue.Queue(maxsize=int(p["queue_size"]))
        self.frames: queue.Queue[tuple[str, int, bytes] | None] = queue.Queue(
            maxsize=2 * max(1, len(self.cameras))
        )
        self.dropped = 0
        self.frames_dropped = 0
        self.errors: list[str] = []
        self.closed_after_s: float | None = None  # how long close() took (None while recording)
        self.backlog_at_close = 0
        self._last_frame: dict[str, int] = {}
        self._lock = threading.Lock()
        self.stats_pub = self.create_publisher(String, "~/stats", 10)
        self._writer_thread = threading.Thread(target=self._write_loop, name="apt-record-writer", daemon=True)
        self._encoder_thread = threading.Thread(target=self._encode_loop, name="apt-record-jpeg", daemon=True)
        self._writer_thread.start()
        self._encoder_thread.start()
        self._discover()
        self.create_timer(float(p["discovery_period"]), self._discover)
        self.create_timer(1.0, self._publish_stats)
        self.get_logger().info(
            f"recording to {self.writer.path}: {len(self.pending)} topics, cameras {self.cameras}"
            f" at {self.camera_rate:g} Hz q{self.jpeg_quality}"
        )

    # ------------------------------------------------------------------------------------- discovery
    def _discover(self) -> None:
        """Subscribe every pending topic that now has a publisher (type from the spec or the graph)."""
        if not self.pending:
            return
        graph = dict(self.get_topic_names_and_types())
        for name, spec in list(self.pending.items()):
            infos = self.get_publishers_info_by_topic(name)
            if not infos:
                continue
            types = graph.get(name) or []
            type_name = spec.type or (types[0] if types else None)
            if type_name is None:
                continue
            del self.pending[name]
            try:
                self._subscribe(name, type_name, _qos_for(infos))
            except Exception as exc:  # an unknown type: say so, keep recording the rest
                self.errors.append(f"{name}: {exc}")
                self.get_logger().error(f"cannot record {name} ({type_name}): {exc}")

    def _subscribe(self, name: str, type_name: str, qos: QoSProfile) -> None:
        msg_type = message_class(type_name)
        if name in self.cameras and type_name == IMAGE:
            self.writer_topics.append((f"{name}/compressed", COMPRESSED, _qos_record(qos)))
            callback = self._camera_callback(name)
        else:
            self.writer_topics.append((name, type_name, _qos_record(qos)))
            callback = self._callback(name)
        self.subscriptions_by_topic[name] = self.create_subscription(msg_type, name, callback, qos, raw=True)
        self.get_logger().info(f"recording {name} ({type_name})")

    def _callback(self, name: str) -> Any:
        def on_message(raw: bytes) -> None:
            try:
                self.queue.put_nowait((name, time.time_ns(), raw))
            except queue.Full:
                self.dropped += 1

        return on_message

    def _camera_callback(self, name: str) -> Any:
        period_ns = int(1e9 / self.camera_rate) if self.camera_rate > 0 else 0

        def on_frame(raw: bytes) -> None:
            now = time.time_ns()
            if period_ns and now - self._last_frame.get(name, 0) < period_ns * 0.9:
                return
            try:
                self.frames.put_nowait((name, now, raw))
                self._last_frame[name] = now
            except queue.Full:
                self.frames_dropped += 1

        return on_frame

    # --------------------------------------------------------------------------------------- threads
    def _encode_loop(self) -> None:
        while (item := self.frames.get()) is not None:
            name, t_ns, raw = item
            try:
                stamp, frame_id, jpeg = encode_jpeg(raw, self.camera_width, self.jpeg_quality)
            except (CdrError, ValueError, cv2.error) as exc:  # one bad frame never ends the encoder
                self.errors.append(f"{name}: {exc}")
                continue
            msg = CompressedImage(format="jpeg")
            msg.header.frame_id = frame_id
            msg.header.stamp.sec = int(stamp)
            msg.header.stamp.nanosec = min(round((stamp - int(stamp)) * 1e9), 999_999_999)
            msg.data = jpeg
            try:
                self.queue.put_nowait((f"{name}/compressed", t_ns, serialize_message(msg)))
            except queue.Full:
                self.dropped += 1

    def _write_loop(self) -> None:
        declared = 0
        trimmer = CdrTrimmer()
        while True:
            item = self.queue.get()
            while declared < len(self.writer_topics):
                name, type_name, qos = self.writer_topics[declared]
                self.writer.add_topic(name, type_name, qos=qos)
                declared += 1
            if item is None:
                break
            try:
                topic, t_ns, raw = item
                self.writer.write(topic, t_ns, trimmer.trim(self.writer.topics[topic].type, raw))
            except Exception as exc:  # disk full, ...: keep the node alive, report it
                self.errors.append(f"write {item[0]}: {exc}")
        with self._lock:
            self.writer.close()

    def stats(self) -> dict[str, Any]:
        return {
            "bag": str(self.writer.path),
            "messages": {t.name: t.count for t in self.writer.topics.values()},
            "bytes": self.writer.size() if self._writer_thread.is_alive() else None,
            "files": len(self.writer.files) + 1,
            "deleted_files": list(self.writer.deleted),
            "dropped": self.dropped,
            "frames_dropped_busy_encoder": self.frames_dropped,
            "waiting_for_publishers": sorted(self.pending),
            "errors": self.errors[-5:],
            "close_s": None if self.closed_after_s is None else round(self.closed_after_s, 3),
            "backlog_at_close": self.backlog_at_close,
        }

    def _publish_stats(self) -> None:
        with contextlib.suppress(Exception):  # a size read racing a file switch: skip this report
            self.stats_pub.publish(String(data=json.dumps(self.stats())))

    def close(self) -> None:
        """Stop the threads, write what is queued, close the last file, write metadata.yaml.

        Waits for the writer however long the queue takes (a bag without its tail or metadata.yaml is the
        worse outcome) and logs the backlog it drains; ``stats()`` then holds ``close_s``."""
        t0 = time.monotonic()
        backlog = self.queue.qsize() + self.frames.qsize()
        if backlog > 100:
            self.get_logger().info(f"writing the {backlog} queued messages before closing the bag")
        _put_when_room(self.frames, self._encoder_thread)
        self._encoder_thread.join()
        _put_when_room(self.queue, self._writer_thread)
        self._writer_thread.join()
        self.closed_after_s = time.monotonic() - t0
        self.backlog_at_close = backlog


def _put_when_room(q: queue.Queue[Any], consumer: threading.Thread) -> None:
    """Queue the end-of-stream ``None`` for a consumer thread; skipped if that thread has already ended."""
    while consumer.is_alive():
        try:
            q.put(None, timeout=0.5)
            return
        except queue.Full:
            continue


def _descriptor(text: str) -> Any:
    from rcl_interfaces.msg import ParameterDescriptor

    return ParameterDescriptor(description=text)


def _nice_arg(argv: Sequence[str]) -> int:
    """The ``nice`` parameter from the command line (``-p nice:=N``): applied before rclpy starts the DDS
    threads, which inherit it (a parameter read after rclpy.init would only reach threads made later)."""
    value = str(dict(_PARAMS_DEFAULTS)["nice"])
    for arg in argv:
        if arg.startswith("nice:="):
            value = arg.split(":=", 1)[1]
    return int(value)


_PARAMS_DEFAULTS = [(name, default) for name, default, _ in _PARAMS]


def main(args: list[str] | None = None) -> None:
    nice = _nice_arg(sys.argv if args is None else args)
    if nice > 0:
        os.nice(nice)
    rclpy.init(args=args)
    node = Recorder()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while rclpy.ok() and not stop.is_set():
            rclpy.spin_once(node, timeout_sec=0.1)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise  # otherwise a timer raced the shutdown (a graph query on the closed context): not an error
    finally:
        node.close()
        print(f"[apt_recorder] summary: {json.dumps(node.stats())}", flush=True)
        node.destroy_node()
        rclpy.try_shutdown()
