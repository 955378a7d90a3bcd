"""Taking messages without an executor, over real DDS in one process: PolledSubscription (newest on demand)
and SubscriptionReceiver (every message, handed over by one thread blocked in a wait set)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("rclpy")

import rclpy
from apt_policy.ros.polling import PolledSubscription, SubscriptionReceiver
from apt_policy.ros.qos import COMMANDS, EVENTS
from std_msgs.msg import Float64, String

pytestmark = pytest.mark.ros


@pytest.fixture
def context(ros_env) -> Iterator[rclpy.Context]:
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.try_shutdown(context=ctx)


def _wait_matched(pub, count: int = 1, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pub.get_subscription_count() < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pub.get_subscription_count() >= count, "no subscriber discovered"


def test_receiver_hands_over_every_message_in_order_with_timestamps(context) -> None:
    rx_node = rclpy.create_node("receiver_under_test", context=context)
    tx_node = rclpy.create_node("sender", context=context)
    got: list[tuple[str, float, dict]] = []
    receiver = SubscriptionReceiver(rx_node)
    receiver.add(Float64, "numbers", EVENTS, lambda m, info: got.append(("numbers", m.data, dict(info))))
    receiver.add(String, "words", EVENTS, lambda m, info: got.append(("words", m.data, dict(info))))
    thread = threading.Thread(target=receiver.run, kwargs={"poll_s": 5.0}, daemon=True)  # stop() must wake it
    thread.start()
    numbers = tx_node.create_publisher(Float64, "numbers", EVENTS)
    words = tx_node.create_publisher(String, "words", EVENTS)
    _wait_matched(numbers)
    _wait_matched(words)
    for i in range(50):
        numbers.publish(Float64(data=float(i)))
        if i % 10 == 0:
            words.publish(String(data=f"w{i}"))
        time.sleep(0.002)
    deadline = time.monotonic() + 10
    while len(got) < 55 and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert [v for topic, v, _ in got if topic == "numbers"] == [float(i) for i in range(50)]
        assert [v for topic, v, _ in got if topic == "words"] == [f"w{i}" for i in range(0, 50, 10)]
        for _, _, info in got:  # the RMW's timestamps (ns): written before received, both set
            assert 0 < info["source_timestamp"] <= info["received_timestamp"]
    finally:
        t0 = time.monotonic()
        receiver.stop()
        thread.join(5)
    assert not thread.is_alive() and time.monotonic() - t0 < 1.0  # stop wakes the wait at once
    rx_node.destroy_node()
    tx_node.destroy_node()


def test_receiver_ends_when_the_context_shuts_down(context) -> None:
    node = rclpy.create_node("receiver_shutdown", context=context)
    receiver = SubscriptionReceiver(node)
    receiver.add(Float64, "nothing", EVENTS, lambda m, info: None)
    thread = threading.Thread(target=lambda: _run_quietly(receiver), daemon=True)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # waiting
    rclpy.try_shutdown(context=context)
    thread.join(5)
    assert not thread.is_alive()


def _run_quietly(receiver: SubscriptionReceiver) -> None:
    with contextlib.suppress(Exception):  # the wait set may fail once the context is gone: ending counts
        receiver.run(poll_s=0.1)


def test_polled_subscription_returns_the_newest_then_nothing(context) -> None:
    rx_node = rclpy.create_node("poller", context=context)
    tx_node = rclpy.create_node("poll_sender", context=context)
    polled = PolledSubscription(rx_node, Float64, "polled", COMMANDS)
    pub = tx_node.create_publisher(Float64, "polled", COMMANDS)
    _wait_matched(pub)
    assert polled.take_latest() is None
    for i in range(5):
        pub.publish(Float64(data=float(i)))
    time.sleep(0.3)  # all five delivered (loopback)
    deadline = time.monotonic() + 10
    latest = None
    while latest is None and time.monotonic() < deadline:
        time.sleep(0.05)
        latest = polled.take_latest()
    assert latest is not None and latest.data == 4.0  # keep-last 1: older ones are gone
    assert polled.take_latest() is None  # taken: not returned twice
    rx_node.destroy_node()
    tx_node.destroy_node()
