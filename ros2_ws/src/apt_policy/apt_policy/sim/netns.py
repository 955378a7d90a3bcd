"""Real network faults between two computers on one machine: two network namespaces joined by a veth pair.

:class:`NetnsLink` makes namespaces ``<name>-a`` and ``<name>-b`` (iproute2), joins them with a veth pair
(``10.x.y.1/24`` and ``.2``, MTU 1500 like an Ethernet link), brings up loopback and a multicast route in
each (DDS discovery is multicast), and then injects faults into the real kernel path:

* :meth:`set_loss` -- drop a share of the packets arriving over the link in a namespace with iptables'
  ``statistic`` match (``-i <veth> -m statistic --mode random --probability p -j DROP`` on INPUT; the
  namespace's own loopback traffic is not touched). This kernel has no netem qdisc.
  Dropping on arrival in both namespaces loses ``p`` of the packets in each direction.
* :meth:`link_down` / :meth:`link_up` -- cut and restore the link (``ip link set ... down / up``).
* :meth:`command` -- the ``ip netns exec`` prefix that runs a process inside one side.

Delay and jitter are not made here: the inference side adds them with a latency profile (runtime.latency),
which the robot cannot tell from network delay.

DDS across the link: every process must use Fast DDS's UDP transport only (``FASTDDS_BUILTIN_TRANSPORTS=
UDPv4``; otherwise two processes of one machine talk through shared memory and never touch the veth) and a
discovery range that is not loopback-only (``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET``); :func:`dds_env` gives
both. Needs root (CAP_NET_ADMIN), ``ip`` and ``iptables``: :func:`unavailable` says why not where they are
missing, so tests can skip with the reason. ROS-free: plain subprocess calls.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Mapping

__all__ = ["NetnsError", "NetnsLink", "dds_env", "unavailable"]

_counter = itertools.count()


class NetnsError(RuntimeError):
    """A namespace, link or firewall command failed (the message has the command and its error)."""


def _run(*args: str) -> str:
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`{' '.join(args)}`: {exc}") from None
    if done.returncode != 0:
        raise NetnsError(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def ip_path() -> str:
    """iproute2's ``ip`` (in /usr/sbin on Debian, which a user's PATH may lack)."""
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), "ip"
    )


def iptables_path() -> str | None:
    """iptables (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    return shutil.which("iptables") or next(
        (p for p in ("/usr/sbin/iptables", "/sbin/iptables") if os.access(p, os.X_OK)), None
    )


def unavailable() -> str | None:
    """Why namespaces with packet loss cannot be made here (None: they can)."""
    if ip_path() == "ip" and shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if iptables_path() is None:
        return "iptables is not installed (Debian: apt-get install iptables)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    try:
        with NetnsLink("aptprobe"):
            pass
    except NetnsError as exc:
        return f"cannot make network namespaces with loss: {exc}"
    return None


def dds_env(discovery: str = "SUBNET") -> dict[str, str]:
    """The DDS settings for processes that talk across the link (see the module docstring)."""
    return {
        "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4",
        "ROS_AUTOMATIC_DISCOVERY_RANGE": discovery,
        "ROS_LOCALHOST_ONLY": "0",
    }


class NetnsLink:
    """Two namespaces joined by a veth pair (module docstring); a context manager that removes them."""

    def __init__(self, name: str | None = None, attach: Mapping[str, str] | None = None) -> None:
        """Make a new pair (``name``: the namespaces' prefix), or with ``attach`` (:meth:`describe` of a
        link another process made) act on that one without owning it (close does nothing)."""
        self._made: list[str] = []
        self.loss: dict[str, float] = {}
        if attach is not None:
            for key in ("a", "b", "if_a", "if_b", "ip_a", "ip_b"):
                setattr(self, key, str(attach[key]))
            return
        n = next(_counter)
        base = name or f"apt{os.getpid() % 100000}x{n}"
        self.a, self.b = f"{base}-a", f"{base}-b"
        tag = f"{os.getpid() % 10000}{n}"[-6:]
        self.if_a, self.if_b = f"va{tag}", f"vb{tag}"
        octet = 1 + (os.getpid() * 7 + n) % 250
        self.ip_a, self.ip_b = f"10.213.{octet}.1", f"10.213.{octet}.2"
        try:
            for ns in (self.a, self.b):
                with contextlib.suppress(NetnsError):  # a leftover of a killed run
                    _run(ip_path(), "netns", "del", ns)
                _run(ip_path(), "netns", "add", ns)
                self._made.append(ns)
            _run(ip_path(), "link", "add", self.if_a, "type", "veth", "peer", "name", self.if_b)
            for ns, dev, ip in ((self.a, self.if_a, self.ip_a), (self.b, self.if_b, self.ip_b)):
                _run(ip_path(), "link", "set", dev, "netns", ns)
                _run(ip_path(), "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                _run(ip_path(), "-n", ns, "link", "set", "lo", "up")
                _run(ip_path(), "-n", ns, "link", "set", dev, "up")
                _run(ip_path(), "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
            self._iptables(self.a, "-L", "INPUT")  # iptables works inside a namespace
        except BaseException:
            self.close()
            raise
        self.loss = {self.a: 0.0, self.b: 0.0}

    def describe(self) -> dict[str, str]:
        """Names and addresses, for ``NetnsLink(attach=...)`` in another process."""
        return {k: getattr(self, k) for k in ("a", "b", "if_a", "if_b", "ip_a", "ip_b")}

    def __enter__(self) -> NetnsLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, ns: str, args: list[str]) -> list[str]:
        """``args`` run inside namespace ``ns`` (``self.a`` or ``self.b``)."""
        return [ip_path(), "netns", "exec", ns, *args]

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with :func:`dds_env`."""
        return {**(os.environ if base is None else base), **dds_env()}

    def set_loss(self, probability: float, ns: str | None = None) -> None:
        """Drop ``probability`` of the packets arriving in ``ns`` (both when None); 0 removes the rule."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"loss probability must be in [0, 1], got {probability}")
        for side in (self.a, self.b) if ns is None else (ns,):
            self._iptables(side, "-F", "INPUT")
            if probability > 0:  # only what arrives over the link (not a namespace's own loopback traffic)
                device = self.if_a if side == self.a else self.if_b
                self._iptables(
                    side, "-A", "INPUT", "-i", device, "-m", "statistic", "--mode", "random",
                    "--probability", f"{probability:.6f}", "-j", "DROP",
                )  # fmt: skip
            self.loss[side] = probability

    def dropped(self, ns: str) -> int:
        """Packets the loss rule dropped so far in ``ns``."""
        out = self._iptables(ns, "-L", "INPUT", "-v", "-x", "-n")
        counts = [int(line.split()[0]) for line in out.splitlines() if "DROP" in line and "statistic" in line]
        return sum(counts)

    def link_down(self) -> None:
        """Cut the link: both ends down (one end alone leaves the other queueing what it sends, delivered
        late when the link comes back: not what a cut cable does)."""
        for ns, dev in ((self.a, self.if_a), (self.b, self.if_b)):
            _run(ip_path(), "-n", ns, "link", "set", dev, "down")

    def link_up(self) -> None:
        for ns, dev in ((self.a, self.if_a), (self.b, self.if_b)):
            _run(ip_path(), "-n", ns, "link", "set", dev, "up")
            with contextlib.suppress(NetnsError):  # the route goes with the link; put it back
                _run(ip_path(), "-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)

    def close(self) -> None:
        """Remove both namespaces (the veth pair and the rules go with them)."""
        while self._made:
            with contextlib.suppress(NetnsError):
                _run(ip_path(), "netns", "del", self._made.pop())

    def _iptables(self, ns: str, *args: str) -> str:
        exe = iptables_path()
        if exe is None:
            raise NetnsError("iptables is not installed")
        return _run(ip_path(), "netns", "exec", ns, exe, "-w", *args)
