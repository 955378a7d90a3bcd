"""Take the newest message of a topic on demand, from any thread, without an executor callback per message.

The arm's joint state comes at up to 1 kHz (franka_ros2's joint_state_broadcaster); an rclpy executor spends
on the order of 0.1 ms of Python per callback, i.e. most of a core at that rate, and the stream thread only
needs the newest sample once per tick. A subscription on a helper node that no executor spins keeps the
newest sample in DDS (best effort, keep last 1) and the stream thread takes it each tick.

The node polls camera frames the same way, from the stream thread right after each send: taking a
640x480 frame holds the GIL for ~0.5 ms, and done there it can never delay a command.

Uses ``Subscription.handle.take_message``: the call rclpy's own executors make (rclpy/executors.py).
"""

from __future__ import annotations

from typing import Any

from rclpy.node import Node


class PolledSubscription:
    """A subscription that is read with :meth:`take_latest` instead of a callback."""

    def __init__(self, node: Node, msg_type: Any, topic: str, qos: Any, raw: bool = False) -> None:
        """``raw``: take the serialised bytes instead of a message object."""
        self._subscription = node.create_subscription(msg_type, topic, _never_called, qos, raw=raw)

    def take_latest(self, max_messages: int = 1000) -> Any | None:
        """The newest message received since the last call, or None (older ones are dropped)."""
        sub = self._subscription
        latest = None
        with sub.handle:
            for _ in range(max_messages):
                taken = sub.handle.take_message(sub.msg_type, sub.raw)
                if taken is None:
                    break
                latest = taken[0]
        return latest


def _never_called(msg: Any) -> None:  # pragma: no cover - the helper node is never spun
    raise RuntimeError("a polled subscription's callback must not run: its node must not be spun")
