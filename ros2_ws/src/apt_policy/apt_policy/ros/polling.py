"""Take the newest message of a topic on demand, from any thread, without an executor callback per message.

The arm's joint state comes at up to 1 kHz (franka_ros2's joint_state_broadcaster); an rclpy executor spends
on the order of 0.1 ms of Python per callback, i.e. most of a core at that rate, and the stream thread only
needs the newest sample once per tick. A subscription on a helper node that no executor spins keeps the
newest sample in DDS (best effort, keep last 1) and the stream thread takes it each tick.

The node polls camera frames the same way, from the stream thread right after each send: taking a
640x480 frame holds the GIL for ~0.5 ms, and done there it can never delay a command.

The simulated robot receives its commands with :class:`SubscriptionReceiver`: one thread blocked in a wait
set on the command topics, every message handed over as it comes, without an executor.

Uses ``Subscription.handle.take_message``: the call rclpy's own executors make (rclpy/executors.py), and
the wait set of ``rclpy.wait_for_message`` (rclpy/wait_for_message.py).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import rclpy
from rclpy.node import Node


def helper_node(parent: Node, suffix: str) -> Node:
    """A second node in ``parent``'s process, named ``<parent's name>_<suffix>`` in its namespace.

    A launch file's ``name=`` becomes ``--ros-args -r __node:=NAME``, a global rule that renames every node
    of the process: the helper would get the parent's name, and the graph would list that name twice. A
    node-local ``__node`` rule (local arguments win over global ones in rcl) keeps the helper's own name,
    while the global topic and namespace remappings still apply to its subscriptions.
    """
    name = f"{parent.get_name()}_{suffix}"
    return rclpy.create_node(
        name,
        context=parent.context,
        cli_args=["--ros-args", "-r", f"__node:={name}"],
        start_parameter_services=False,
    )


class PolledSubscription:
    """A subscription that is read with :meth:`take_latest` instead of a callback."""

    def __init__(self, node: Node, msg_type: Any, topic: str, qos: Any, raw: bool = False) -> None:
        """``raw``: take the serialised bytes instead of a message object."""
        self._subscription = node_subscription(node, msg_type, topic, qos, raw=raw)

    def take_latest(self, max_messages: int = 1000) -> Any | None:
        """The newest message received since the last call, or None (older ones are dropped)."""
        latest = None
        for msg, _ in take_all(self._subscription, max_messages):
            latest = msg
        return latest


def take_all(sub: Any, max_messages: int | None = None) -> Iterator[tuple[Any, Any]]:
    """(message, MessageInfo) for each message waiting on subscription ``sub`` (at most ``max_messages``)."""
    with sub.handle:
        count = 0
        while max_messages is None or count < max_messages:
            taken = sub.handle.take_message(sub.msg_type, sub.raw)
            if taken is None:
                return
            count += 1
            yield taken[0], taken[1]


class SubscriptionReceiver:
    """Every message of a few subscriptions, handed to ``handler(msg, info)`` by one thread that waits on
    them with a single rclpy wait set (what ``rclpy.wait_for_message`` does) instead of an executor.

    For a thread that exists only to receive commands (the simulated robot's command reception): per
    message a wait, a take and the handler, not the executor's task and coroutine machinery; ``info`` is
    the RMW's MessageInfo (reception and source timestamps). :meth:`run` blocks until :meth:`stop` or the
    context shuts down; the node must not be spun by an executor.
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._entries: list[tuple[Any, Callable[[Any, Any], None]]] = []
        self._wake = node.create_guard_condition(_never_called)
        self._stop = threading.Event()

    def add(self, msg_type: Any, topic: str, qos: Any, handler: Callable[[Any, Any], None]) -> None:
        """Receive ``topic``; call before :meth:`run`."""
        self._entries.append((node_subscription(self._node, msg_type, topic, qos), handler))

    def run(self, poll_s: float = 0.5) -> None:
        """Receive until :meth:`stop` (checks the context every ``poll_s`` s)."""
        from rclpy.exceptions import InvalidHandle
        from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

        context = self._node.context
        handle = context.handle
        assert handle is not None  # a node's context is initialised
        wait_set = _rclpy.WaitSet(len(self._entries), 1, 0, 0, 0, 0, handle)
        timeout_ns = int(poll_s * 1e9)
        while not self._stop.is_set() and context.ok():
            # Hold every handle while waiting and taking, as rclpy's executors do: a context shutdown
            # destroys the node's entities from another thread, and rcl would free a subscription this wait
            # still uses (a segmentation fault seen under load); held handles are destroyed when released.
            with contextlib.ExitStack() as held:
                try:
                    for sub, _ in self._entries:
                        held.enter_context(sub.handle)
                    held.enter_context(self._wake.handle)
                except InvalidHandle:
                    return  # destroyed already: the node or context is going away
                wait_set.clear_entities()
                for sub, _ in self._entries:
                    wait_set.add_subscription(sub.handle)
                wait_set.add_guard_condition(self._wake.handle)
                wait_set.wait(timeout_ns)
                ready = wait_set.get_ready_entities("subscription")
                for sub, handler in self._entries:
                    if sub.handle.pointer in ready:
                        for msg, info in take_all(sub):
                            handler(msg, info)

    def stop(self) -> None:
        """End :meth:`run` (from any thread)."""
        self._stop.set()
        self._wake.trigger()


def node_subscription(node: Node, msg_type: Any, topic: str, qos: Any, raw: bool = False) -> Any:
    """A subscription whose messages are taken by hand (its callback must never run)."""
    return node.create_subscription(msg_type, topic, _never_called, qos, raw=raw)


def _never_called(*args: Any) -> None:  # pragma: no cover - the helper nodes are never spun
    raise RuntimeError("a polled subscription's or receiver's callback ran: its node must not be spun")
