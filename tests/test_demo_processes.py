"""The demo's process handling: every child stopped on failure, on Ctrl-C and when a child ignores SIGINT."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from apt_policy.bench.demo_runs import process_starts
from apt_policy.demo.processes import ManagedProcesses, ProcessDiedError
from apt_policy.demo.run import DISCOVERY_SETTLE_S

# A child that ignores SIGINT and starts a grandchild in its own process group (like a node's helpers).
STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("grandchild", child.pid, flush=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def _wait_for_line(path: Path, prefix: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            if line.startswith(prefix):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no line starting with {prefix!r} in {path}")


def test_stop_all_kills_children_that_ignore_sigint_and_their_groups(tmp_path: Path) -> None:
    procs = ManagedProcesses(tmp_path, grace_s=1.0)
    child = procs.start("stubborn", [sys.executable, "-c", STUBBORN])
    grandchild = int(_wait_for_line(child.log, "grandchild").split()[1])
    assert _alive(child.proc.pid) and _alive(grandchild)
    t = time.monotonic()
    procs.stop_all()
    assert time.monotonic() - t < 5.0
    assert child.proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert procs.children == []


def test_a_clean_child_gets_sigint_first(tmp_path: Path) -> None:
    code = (
        "import time\ntry:\n    print('ready', flush=True)\n    time.sleep(600)\n"
        "except KeyboardInterrupt:\n    print('clean exit')\n"
    )
    with ManagedProcesses(tmp_path, grace_s=5.0) as procs:
        # Started as a shell's background job would be: SIGINT ignored in the parent, inherited over exec.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            child = procs.start("polite", [sys.executable, "-c", code])
        finally:
            signal.signal(signal.SIGINT, previous)
        _wait_for_line(child.log, "ready")  # SIGINT before the interpreter is up would be a different test
    assert child.proc.returncode == 0
    assert "clean exit" in child.log.read_text()


def test_a_dead_child_is_reported_with_its_log(tmp_path: Path) -> None:
    with ManagedProcesses(tmp_path) as procs:
        procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
        dead = procs.start(
            "crasher", [sys.executable, "-c", "print('model file missing'); raise SystemExit(3)"]
        )
        dead.proc.wait(10)
        with pytest.raises(ProcessDiedError) as info:
            procs.check_alive()
        sleeper = procs.get("sleeper").proc
    message = str(info.value)
    assert "crasher exited with status 3" in message
    assert str(tmp_path / "crasher.log") in message and "model file missing" in message
    assert sleeper.returncode is not None  # the context manager stopped the survivor too


def _processes_with_env(key: str, value: str) -> list[int]:
    """PIDs whose environment has ``key=value`` (our own children only: the value is a unique temp path)."""
    found = []
    needle = f"{key}={value}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and _alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _kill_leftovers(out: Path) -> None:
    """SIGKILL every process still running with the demo's ROS_LOG_DIR (a demo that was itself killed)."""
    for pid in _processes_with_env("ROS_LOG_DIR", str((out / "logs" / "ros").resolve())):
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.kill(pid, signal.SIGKILL)


@pytest.mark.ros
def test_demo_fails_clearly_and_leaves_no_process_when_the_node_cannot_start(
    ros_env: dict[str, str], tmp_path: Path, tiny_export: Path
) -> None:
    """A model dir that is no export: the demo says so before starting anything. One whose manifest reads
    but whose graphs are missing: the policy node refuses to configure, the demo says so with the node's
    log and its reason, stops the node, the camera and the simulated arm, and returns 1."""
    not_export = tmp_path / "not_an_export"
    not_export.mkdir()
    out = tmp_path / "demo_out"

    def demo(model: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "apt_policy.demo", "--out", str(out), "--model", str(model)]
        cmd += ["--domain-id", ros_env["ROS_DOMAIN_ID"], "--startup-timeout", "60"]
        return subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=180)

    result = demo(not_export)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "demo FAILED" in result.stderr and "manifest.json not found" in result.stderr
    assert not (out / "logs" / "fake_camera.log").exists()  # nothing was started for it

    bad_model = tmp_path / "graphs_missing"
    bad_model.mkdir()
    shutil.copy(tiny_export / "manifest.json", bad_model / "manifest.json")
    result = demo(bad_model)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "demo FAILED" in result.stderr and "configuring the policy node" in result.stderr
    assert "was refused" in result.stderr and str(out / "logs" / "policy_node.log") in result.stderr
    assert ".onnx" in result.stderr.split("--- last lines ---")[-1]  # the node's reason: a missing graph
    assert (out / "logs" / "fake_camera.log").is_file()
    assert _processes_with_env("ROS_LOG_DIR", str((out / "logs" / "ros").resolve())) == []


@pytest.mark.ros
@pytest.mark.slow
def test_ctrl_c_during_an_episode_stops_every_process(ros_env: dict[str, str], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import numpy as np
    from apt_export.onnx_export import export_onnx
    from apt_policy.core.normalize import Normalizer
    from apt_policy.core.preprocess import build_word_tokenizer
    from apt_policy.model.apt import APTModel
    from apt_policy.model.bundle import save_bundle
    from apt_policy.model.presets import tiny_policy_config
    from apt_policy.tasks.dataset import action_names, state_names

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = tiny_policy_config(
        cameras=("front",), state_names=state_names(), action_names=action_names(), horizon=8
    )
    from apt_policy.robots.franka import FR3

    # around the ready pose: the node's self-check refuses a model whose chunk leaves the joint limits
    states = np.random.default_rng(0).normal(0.0, 0.01, (50, 8)) + np.append(FR3.ready_pose, 0.08)
    normalizer = Normalizer.fit(states, np.repeat(states[:, None], 8, axis=1), config.normalization)
    build_word_tokenizer(["reach the red block"], tmp_path / "tok.json")
    bundle = save_bundle(tmp_path / "bundle", APTModel(config), normalizer, tmp_path / "tok.json")
    export = tmp_path / "onnx"
    export_onnx(bundle, export, precision="fp32", progress=False)

    out = tmp_path / "demo_out"
    cmd = [sys.executable, "-m", "apt_policy.demo", "--out", str(out), "--model", str(export)]
    cmd += ["--domain-id", ros_env["ROS_DOMAIN_ID"], "--timeout", "60"]
    log = tmp_path / "demo.log"
    with log.open("w") as f:
        demo = subprocess.Popen(cmd, env=ros_env, stdout=f, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(log, "    ep1: reach", timeout=120)  # the instruction was sent: mid-episode
        ros_log = str((out / "logs" / "ros").resolve())
        assert len(_processes_with_env("ROS_LOG_DIR", ros_log)) >= 3  # camera, arm, node
        demo.send_signal(signal.SIGINT)
        assert demo.wait(60) == 130
    finally:
        if demo.poll() is None:
            demo.kill()
            # A hung demo leaves its children running in their own sessions: never leak them into later tests.
            for pid in _processes_with_env("ROS_LOG_DIR", str((out / "logs" / "ros").resolve())):
                os.kill(pid, signal.SIGKILL)
    assert "every process it started has been stopped" in log.read_text()
    assert _processes_with_env("ROS_LOG_DIR", ros_log) == []


@pytest.mark.ros
@pytest.mark.slow
def test_one_arm_and_one_node_run_every_episode_each_from_its_start_pose(
    ros_env: dict[str, str], tmp_path: Path, tiny_export: Path
) -> None:
    """fake_franka and the node start once; between episodes the arm is reset to the start pose, the node
    deactivated and activated (no FAULT), and each episode gets its own arrival-log segment and report."""
    import json

    import numpy as np
    from apt_policy.demo.recording import load_recordings

    out = tmp_path / "demo_out"
    cmd = [sys.executable, "-m", "apt_policy.demo", "--out", str(out), "--model", str(tiny_export)]
    cmd += ["--domain-id", ros_env["ROS_DOMAIN_ID"], "--timeout", "2", "--switch-after", "0.5"]
    try:
        result = subprocess.run(cmd, env=ros_env, capture_output=True, text=True, timeout=400)
    finally:  # a timed-out demo is killed; its processes (their own sessions) must not outlive the test
        _kill_leftovers(out)
    logs = out / "logs"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in logs.glob("*policy_node.log")) == ["policy_node.log"]
    assert sorted(p.name for p in logs.glob("*fake_franka.log")) == ["fake_franka.log"]
    node_log = (logs / "policy_node.log").read_text()
    assert node_log.count("lifecycle configure: done") == 1
    assert node_log.count("lifecycle activate: done") == 5
    assert node_log.count("lifecycle deactivate: done") == 5
    # the node streams only once discovery has settled: its first activation comes DISCOVERY_SETTLE_S
    # after the last process was started (rcl names each ROS log file by its process's start)
    starts_s = process_starts(logs / "ros")
    first_activation = re.search(r"\[(\d+\.\d+)\] \[apt_policy\]: lifecycle activate: done", node_log)
    assert first_activation is not None and len(starts_s) >= 4, (node_log, starts_s)
    assert float(first_activation.group(1)) - max(starts_s) > DISCOVERY_SETTLE_S - 1.0
    assert "FAULT" not in node_log and "tracking error" not in node_log
    assert (logs / "fake_franka.log").read_text().count("simulation reset") == 4

    recordings = load_recordings(out / "recording")
    report = json.loads((out / "report.json").read_text())
    assert len(recordings) == 5 and len(report["episodes"]) == 5
    for rec, episode in zip(recordings, report["episodes"], strict=True):
        first = rec.joint_q[np.argmax(rec.joint_t >= 0.0)]
        np.testing.assert_allclose(first, rec.plan.start_q, atol=1e-3)  # every episode from its start pose
        assert episode["commands"] > 50, episode
        segment = json.loads((logs / f"{rec.plan.name}_arrivals.json").read_text())
        commands = segment["topics"]["/fr3_arm_controller/joint_trajectory"]
        assert len(commands) >= episode["commands"] and "summary" in segment
        assert episode["robot_violations"] == segment["summary"]["total_violations"]


@pytest.mark.ros
@pytest.mark.slow
def test_a_fault_in_one_episode_is_reset_and_the_next_episodes_run(
    ros_env: dict[str, str], tmp_path: Path, tiny_export: Path
) -> None:
    """The arm pushed 0.5 rad away mid-episode (fake_franka's reset, as a reflex or a hand would): the node
    FAULTs on the tracking error, the demo resets it (~/reset) after that episode, and the rest still run
    with the same node."""
    import json

    import numpy as np
    import rclpy
    from apt_policy.robots.franka import FR3
    from rcl_interfaces.srv import SetParametersAtomically
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    out = tmp_path / "demo_out"
    cmd = [sys.executable, "-m", "apt_policy.demo", "--out", str(out), "--model", str(tiny_export)]
    cmd += ["--domain-id", ros_env["ROS_DOMAIN_ID"], "--timeout", "4", "--switch-after", "0.5"]
    log = tmp_path / "demo.log"
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("push_the_arm", context=ctx)
    try:
        with log.open("w") as f:
            demo = subprocess.Popen(cmd, env=ros_env, stdout=f, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_for_line(log, "    ep2: ", timeout=180)  # ep2's instruction was sent
            time.sleep(0.5)
            pushed = FR3.ready_pose + np.array([0.5, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0])
            client = node.create_client(SetParametersAtomically, "/fake_franka/set_parameters_atomically")
            assert client.wait_for_service(timeout_sec=20.0)
            request = SetParametersAtomically.Request(
                parameters=[Parameter("initial_positions", value=pushed.tolist()).to_parameter_msg()]
            )
            future = client.call_async(request)
            executor = SingleThreadedExecutor(context=ctx)
            executor.add_node(node)
            executor.spin_until_future_complete(future, timeout_sec=20.0)
            assert future.result() is not None and future.result().result.successful
            assert demo.wait(300) == 0, log.read_text()[-3000:]
        finally:
            if demo.poll() is None:
                demo.send_signal(signal.SIGINT)  # the demo stops what it started
                try:
                    demo.wait(60)
                except subprocess.TimeoutExpired:
                    demo.kill()
            _kill_leftovers(out)  # never leak a failed run's processes (their own sessions) into later tests
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    text = log.read_text()
    assert "ep2: the node is in FAULT (tracking error" in text, text[-3000:]
    node_log = (out / "logs" / "policy_node.log").read_text()
    assert "reset by the operator" in node_log
    report = json.loads((out / "report.json").read_text())
    assert [e["name"] for e in report["episodes"]] == ["ep1", "ep2", "ep3", "ep4", "ep5-switch"]
    assert all(e["commands"] > 50 for e in report["episodes"][2:])  # the same node streams again
