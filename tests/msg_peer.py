"""A second process for the message round-trip test: echoes apt_msgs messages back over DDS.

Subscribes to /apt_test/chunk_in and /apt_test/status_in and republishes every message unchanged on the
matching *_out topic, so the test process can compare what it sent with what crossed two hops.
"""

from __future__ import annotations

import sys

import rclpy
from apt_msgs.msg import ActionChunk, PolicyStatus
from rclpy.executors import ExternalShutdownException
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy


def main() -> int:
    rclpy.init()
    node = rclpy.create_node("apt_msg_peer")
    qos = QoSProfile(
        depth=10, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL
    )
    pubs = {
        "chunk": node.create_publisher(ActionChunk, "/apt_test/chunk_out", qos),
        "status": node.create_publisher(PolicyStatus, "/apt_test/status_out", qos),
    }
    node.create_subscription(ActionChunk, "/apt_test/chunk_in", pubs["chunk"].publish, qos)
    node.create_subscription(PolicyStatus, "/apt_test/status_in", pubs["status"].publish, qos)
    print("peer ready", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
