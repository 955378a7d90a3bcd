"""QoS profiles shared by the node, the simulated hardware, the demo's probe and the tests."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["CAMERA", "COMMANDS", "EVENTS", "LATCHED", "SENSOR", "SERVICES", "SERVICE_QUEUE_DEPTH"]

# Status, chunks, diagnostics, commands to the simulated arm: every message matters, a short queue.
EVENTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Sensor streams read by the node: only the newest sample matters.
SENSOR = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
# Camera frames (parameter camera_reliability): only the newest matters, but a 640x480 frame is ~900 kB in
# many fragments: best effort drops the frame when one fragment is lost (a receiver slow to drain its socket);
# on the loaded 2-core machine that lost 46% of fake_camera's frames, gaps up to 1.3 s. Reliable repairs them.
CAMERA = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
# Reports a late subscriber must still get (violations, the current scene): the last one is kept.
LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
# Arm and gripper commands from the node: a late command is useless, only the newest one matters.
COMMANDS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Services and the action's services (requests and replies): a burst of calls must all be answered. rclpy's
# default (keep last 10) lets requests that arrive before the executor takes them overwrite each other, so a
# client waits for a reply that never comes (200 calls at once: 153 unanswered). A client sending bursts needs
# the same depth for its replies.
SERVICE_QUEUE_DEPTH = 1000
SERVICES = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=SERVICE_QUEUE_DEPTH,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
