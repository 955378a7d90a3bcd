"""The netns harness itself (no ROS): a veth pair between two namespaces carries UDP; the loss rule drops
what arrives over the link (counted), not the namespace's own loopback traffic; a cut link carries nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from apt_policy.sim.netns import NetnsLink, unavailable

_PROBLEM = unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_PROBLEM is not None, reason=f"netns: {_PROBLEM}")]

RECEIVE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 47000)); s.settimeout(1.0)
n = 0
try:
    while True:
        s.recv(100); n += 1
except socket.timeout:
    print(n)
"""
SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    try:
        s.sendto(b"x", (sys.argv[1], 47000))
    except OSError:
        pass
    time.sleep(0.002)
"""


def _received(link: NetnsLink, sender: str, receiver_ip: str, receiver: str, count: int = 200) -> int:
    rx = subprocess.Popen(
        link.command(receiver, [sys.executable, "-c", RECEIVE]), stdout=subprocess.PIPE, text=True
    )
    import time

    time.sleep(0.3)
    subprocess.run(
        link.command(sender, [sys.executable, "-c", SEND, receiver_ip, str(count)]), check=True, timeout=30
    )
    out, _ = rx.communicate(timeout=30)
    return int(out.strip())


def test_loss_and_cut_act_on_the_link_only() -> None:
    with NetnsLink() as link:
        assert _received(link, link.b, link.ip_a, link.a) == 200
        link.set_loss(0.5, link.a)
        got = _received(link, link.b, link.ip_a, link.a)
        assert 40 < got < 160 and link.dropped(link.a) == 200 - got
        assert _received(link, link.a, "127.0.0.1", link.a) == 200  # loopback inside A is not touched
        again = NetnsLink(attach=link.describe())  # another process's view of the same link
        again.set_loss(0.0, link.a)
        link.link_down()
        assert _received(link, link.b, link.ip_a, link.a) == 0
        link.link_up()
        assert _received(link, link.b, link.ip_a, link.a) == 200
    assert link.a not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
