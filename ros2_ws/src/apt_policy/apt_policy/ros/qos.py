"""QoS profiles shared by the node, the simulated hardware, the demo's probe and the tests."""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["COMMANDS", "EVENTS", "LATCHED", "SENSOR"]

# Status, chunks, diagnostics, commands to the simulated arm: every message matters, a short queue.
EVENTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Sensor streams read by the node: only the newest sample matters.
SENSOR = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
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
