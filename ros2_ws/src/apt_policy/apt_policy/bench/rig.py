"""The simulated robot cell for whole-system runs (soak, fault matrix): three processes and a probe.

``Rig`` starts fake_franka, fake_camera and the policy node as real processes on a private ROS domain (logs
in its work dir), and an in-process probe node on its own context that records the node's status timeline
and /diagnostics, fake_franka's contract-violation report and every trajectory command, and that can
inject messages (instructions, joint states, camera frames) and switch the camera.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from apt_policy.bench.procfs import children
from apt_policy.control.realtime import CONTROLLER_PRIORITY, STREAM_PRIORITY

INSTRUCTIONS = ("reach the red block", "reach the green block", "reach the blue block")
MODULES = {
    "franka": "apt_policy.sim.fake_franka",
    "camera": "apt_policy.sim.fake_camera",
    "node": "apt_policy.ros.policy_node",
}
STATE_NAMES = {0: "IDLE", 1: "RUNNING", 2: "HOLDING", 3: "PAUSED", 4: "FAULT"}


class Probe:
    """Recorder and injector (see the module docstring); spins on its own thread."""

    def __init__(self) -> None:
        import rclpy
        from apt_msgs.msg import PolicyStatus
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from std_srvs.srv import SetBool
        from trajectory_msgs.msg import JointTrajectory

        from apt_policy.ros.qos import CAMERA, COMMANDS, EVENTS, LATCHED, SENSOR

        self._ctx = rclpy.Context()
        rclpy.init(context=self._ctx)
        self.node = n = rclpy.create_node("rig_probe", context=self._ctx)
        self.lock = threading.Lock()
        self.timeline: list[tuple[float, int, str]] = []  # (monotonic, state, reason) on every change
        self.status: Any = None
        self.diag: dict[str, str] = {}
        self.violations: dict[str, Any] = {}
        self.commands: list[float] = []  # receive times of trajectory commands
        self.measured: dict[str, float] = {}  # the arm's latest joint positions, by name
        self.msg = {"String": String, "JointState": JointState, "Image": Image, "SetBool": SetBool}
        self.instruction = n.create_publisher(String, "/apt_policy/instruction", EVENTS)
        self.joints = n.create_publisher(JointState, "/franka/joint_states", SENSOR)
        self.camera_pub = n.create_publisher(Image, "/camera/camera/color/image_raw", CAMERA)
        self.camera_switch = n.create_client(SetBool, "/fake_camera/enable")
        n.create_subscription(PolicyStatus, "/apt_policy/status", self._on_status, EVENTS)
        n.create_subscription(JointState, "/franka/joint_states", self._on_joints, SENSOR)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, EVENTS)
        n.create_subscription(String, "/fake_franka/violations", self._on_violations, LATCHED)
        n.create_subscription(
            JointTrajectory, "/fr3_arm_controller/joint_trajectory", self._on_command, COMMANDS
        )
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(n)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:
            if self._ctx.ok():
                raise

    def _on_status(self, msg: Any) -> None:
        with self.lock:
            last = self.timeline[-1] if self.timeline else None
            if last is None or last[1] != msg.state:
                self.timeline.append((time.monotonic(), int(msg.state), str(msg.last_fault)))
            self.status = msg

    def _on_joints(self, msg: Any) -> None:
        if len(msg.name) == len(msg.position) and all(p == p for p in msg.position):  # skip injected NaN
            with self.lock:
                self.measured = dict(zip(msg.name, msg.position, strict=True))

    def _on_diag(self, msg: Any) -> None:
        for st in msg.status:
            if "apt_policy" in st.name:
                with self.lock:
                    self.diag = {kv.key: kv.value for kv in st.values}

    def _on_violations(self, msg: Any) -> None:
        with self.lock:
            self.violations = json.loads(msg.data)

    def _on_command(self, msg: Any) -> None:
        with self.lock:
            self.commands.append(time.monotonic())

    # ---------------------------------------------------------------- queries
    def state(self) -> int | None:
        return None if self.status is None else int(self.status.state)

    def total_violations(self) -> int:
        with self.lock:
            return int(self.violations.get("total_violations", 0))

    def first_state_after(self, t: float, states: Sequence[int]) -> float | None:
        """Seconds from ``t`` to the first change into one of ``states`` (None if none)."""
        with self.lock:
            for when, state, _ in self.timeline:
                if when >= t and state in states:
                    return when - t
        return None

    def wait_state(self, states: Sequence[int], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.state() in states:
                return True
            time.sleep(0.02)
        return False

    # ---------------------------------------------------------------- injection
    def say(self, text: str) -> None:
        self.instruction.publish(self.msg["String"](data=text))

    def camera_enabled(self, on: bool) -> bool:
        if not self.camera_switch.wait_for_service(timeout_sec=5.0):
            return False
        self.camera_switch.call_async(self.msg["SetBool"].Request(data=on))
        return True

    def close(self) -> None:
        import rclpy

        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._ctx)
        self._thread.join(2)


def command_line(name: str, ros_args: Sequence[str] = ()) -> list[str]:
    """``python -m`` command of one of the rig's executables (always this interpreter's code)."""
    return [sys.executable, "-m", MODULES[name], "--ros-args", *ros_args]


class Rig:
    """fake_franka + fake_camera + policy node (+ :class:`Probe`); a context manager that stops them all."""

    def __init__(
        self,
        model: Path,
        workdir: Path,
        node_args: Sequence[str] = (),
        rate: float = 100.0,
        domain: int | None = None,
        model_env: dict[str, str] | None = None,
        prefix: dict[str, list[str]] | None = None,
        realtime: bool = True,
        extra_args: dict[str, list[str]] | None = None,
    ) -> None:
        """``realtime``: fake_franka and the node's stream thread SCHED_FIFO as in the demo
        (:data:`~apt_policy.control.realtime.CONTROLLER_PRIORITY` above ``STREAM_PRIORITY``; each logs a
        warning and runs normally where that is not permitted). ``extra_args``: more arguments per process
        (``franka``, ``camera``, ``node``)."""
        self.workdir = workdir
        self.model = model
        self.prefix = prefix or {}  # per process: a command prefix (e.g. ``ip netns exec NS``)
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "ROS_DOMAIN_ID": str(domain if domain is not None else 1 + os.getpid() % 100),
            "ROS_LOG_DIR": str(workdir / "ros_log"),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "PYTHONUNBUFFERED": "1",
            **(model_env or {}),
        }
        os.environ.update({k: self.env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
        self.args = {
            "franka": ["-p", f"realtime_priority:={CONTROLLER_PRIORITY if realtime else 0}"],
            "camera": ["-p", "scene_seed:=3"],
            "node": [
                "-p", f"realtime_priority:={STREAM_PRIORITY if realtime else 0}",
                "-p", f"model:={model}",
                "-p", f"control_rate:={float(rate)}",
                "-p", f"instruction:={INSTRUCTIONS[0]}",
                *node_args,
            ],
        }  # fmt: skip
        for name, args in (extra_args or {}).items():
            self.args[name] = [*self.args[name], *args]
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[Any] = []
        for name in ("franka", "camera", "node"):
            self.start(name)
        self.probe = Probe()

    def start(self, name: str) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("ab")
        self._logs.append(log)
        proc = subprocess.Popen(
            [*self.prefix.get(name, []), *command_line(name, self.args[name])],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(15)

    def children(self, name: str) -> list[int]:
        """Child processes of ``name`` (the node's inference process, also when restarted by a thread)."""
        return children(self.procs[name].pid)

    def wait_streaming(self, timeout: float = 180.0) -> None:
        end = time.monotonic() + timeout
        while self.probe.status is None or self.probe.status.chunks_produced < 1:
            dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
            if time.monotonic() > end or dead:
                raise RuntimeError(
                    f"the node did not start streaming ({dead or 'timeout'}); logs: {self.workdir}"
                )
            time.sleep(0.1)

    def exit_codes(self) -> dict[str, int | None]:
        return {n: p.poll() for n, p in self.procs.items()}

    def close(self) -> dict[str, int | None]:
        """Stop everything (SIGINT, then SIGKILL after 15 s); the exit code of each process."""
        self.probe.close()
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        codes: dict[str, int | None] = {}
        for name, p in self.procs.items():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            codes[name] = p.returncode
        for log in self._logs:
            log.close()
        return codes

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
