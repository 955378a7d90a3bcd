"""``make demo``: trained APT weights -> ONNX export (verified) -> ROS 2 policy node -> simulated FR3.

Steps (each prints a header; any failure ends the demo with a message naming the log file):

1. model    the cached Stage-2 demo bundle, or ``apt-train demo`` (minutes on 2 cores, once)
2. export   ``apt-export onnx`` (cached with the bundle), then ``apt-export verify`` (PyTorch vs ONNX Runtime)
3. robot    ``apt-fake-camera`` (one per model camera: demo/cameras.py) on its own ROS_DOMAIN_ID, loopback
            only; logs in ``<out>/logs``
4. episodes ``apt-fake-franka`` and ``apt-policy-node`` (config/sim.yaml, ONNX Runtime) start once, like a
            robot's controller and policy node, and run every episode. The node starts unconfigured; the
            demo configures it and activates it only once DDS discovery has settled (DISCOVERY_SETTLE_S
            after every process is up, the recorder recording the arm and the node), as an operator would
            on the robot. Per episode: the camera gets the
            episode's scene, the arm is put at the start pose (fake_franka's simulation reset) and the node
            is activated (lifecycle: it starts from where the arm is); once it is IDLE the demo publishes the
            instruction(s) on ``/apt_policy/instruction`` and records until the arm settles at the named block
            or the episode times out; then the node stops (``~/stop``) and is deactivated, and fake_franka
            writes the episode's command arrivals and contract report (a new ``arrival_log`` segment)
            ``apt-record`` records every topic of the run to ``recording/`` (rosbag2 MCAP), and the demo marks
            each episode in it (``apt_policy.demo.recording``)
5. report   ``report.json``, ``report.png``, ``episode.mp4``, all computed from ``recording/`` read back
            (``--report-only`` rebuilds them from it)

The demo process itself never imports torch: training, export and verification run as subprocesses.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apt_policy.control.realtime import CONTROLLER_PRIORITY
from apt_policy.data.bag import bag_size
from apt_policy.demo.cameras import (
    FIRST_IMAGE_TOPIC,
    SimCamera,
    model_cameras,
    node_camera_overrides,
    sim_cameras,
)
from apt_policy.demo.episodes import plan_episodes
from apt_policy.demo.machine import steal_seconds
from apt_policy.demo.processes import ManagedProcesses, ProcessDiedError, log_tail
from apt_policy.demo.recording import (
    EPISODE_TOPIC,
    EpisodePlan,
    EpisodeRecording,
    end_marker,
    load_recordings,
    start_marker,
)
from apt_policy.demo.report import (
    build_report,
    format_summary,
    nan_to_none,
    plot_report,
    tcp_positions,
    video_frame_count,
    write_video,
)
from apt_policy.ros.params import parameters_from_yaml
from apt_policy.tasks.scene import SUCCESS_RADIUS, Scene

__all__ = ["DemoError", "DemoOptions", "make_report", "run_demo"]

TRAJECTORY_TOPIC = "/fr3_arm_controller/joint_trajectory"
SETTLE_SPEED = 0.03  # rad/s: every joint slower than this counts as at rest
SETTLE_TIME_S = 0.4  # at rest within the success radius this long ends the episode
STUCK_TIME_S = 2.0  # at rest elsewhere this long (after the last instruction) ends it too
RECORDING = "recording"  # the rosbag2 MCAP directory in <out>
VIDEO_WIDTH = 400  # recorded camera frames are resized to this width (the video's)


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


@dataclass
class DemoOptions:
    out: Path = Path("demo_out")
    model: Path | None = None  # an export dir to use instead of the cached demo model (skips steps 1-2)
    bundle: Path | None = None  # the bundle of ``model`` (for verify); None with ``model`` = skip verify
    seed: int = 20_000
    switch_after_s: float = 1.0
    timeout_s: float = 12.0
    startup_timeout_s: float = 120.0
    domain_id: int | None = None
    video_fps: float = 15.0
    params_file: Path | None = None
    cache: Path | None = None
    latency: str = ""  # the node's simulated_latency (simulation only): fixed:<ms> | orin | thor | rtx4090
    chunk_execution: str | None = None  # the node's chunk_execution (None: the params file's / default)
    family: str = "apt"  # the demo model's seed system (apt | action_prior | action_distillation)
    timings: dict[str, float] = field(default_factory=dict)
    steal_s: dict[str, float | None] = field(default_factory=dict)  # per episode (run_episodes fills it)


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def _header(step: int, total: int, title: str) -> None:
    print(f"\n==> [{step}/{total}] {title}", flush=True)


def default_params_file() -> Path:
    """config/sim.yaml of the apt_policy package (source tree, or the installed share dir)."""
    source = Path(__file__).resolve().parents[2] / "config" / "sim.yaml"
    if source.is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("apt_policy")) / "config" / "sim.yaml"
    except Exception as exc:  # not installed with colcon either
        raise DemoError(f"cannot find config/sim.yaml of apt_policy ({exc})") from exc


def control_rate_of(params_file: Path) -> float:
    return float(parameters_from_yaml(params_file).get("control_rate") or 100.0)


# ---------------------------------------------------------------------------------------- model + export


def obtain_model(opts: DemoOptions) -> tuple[Path, Path, dict[str, Any]]:
    """(bundle, export dir, training evaluation) from the cache, training/exporting on first use."""
    from apt_policy.demo import model_cache

    t = time.monotonic()
    try:
        bundle, export = model_cache.ensure_demo_model(opts.cache, verbose=True, family=opts.family)
        opts.timings["model_and_export_s"] = time.monotonic() - t
        _header(2, 5, "export: apt-export onnx (cached with the bundle) + apt-export verify")
    except subprocess.CalledProcessError as exc:
        raise DemoError(
            f"`{' '.join(map(str, exc.cmd))}` failed with status {exc.returncode} (output above)"
        ) from exc
    except FileNotFoundError as exc:
        raise DemoError(str(exc)) from exc
    return bundle, export, training_evaluation(bundle)


def training_evaluation(bundle: Path) -> dict[str, Any]:
    """The success rates ``apt-train demo`` wrote next to the bundles (simulated rollouts, no ROS)."""
    found: dict[str, Any] = {}
    for path in sorted(bundle.parent.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "success" in json.dumps(data)[:100_000]:
            found[path.name] = data
    return found


def export_bundle(bundle: Path, out: Path, log_dir: Path) -> Path:
    """``apt-export onnx --bundle B --out OUT --force``; raises DemoError (with the log) on failure."""
    log = log_dir / "export.log"
    cmd = [_tool("apt-export"), "onnx", "--bundle", str(bundle), "--out", str(out), "--force"]
    with log.open("wb") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise DemoError(
            f"apt-export onnx failed (status {code}); see {log}\n--- last lines ---\n{log_tail(log)}"
        )
    return out


def verify_export(bundle: Path, export: Path, out: Path, log_dir: Path) -> dict[str, Any]:
    """``apt-export verify``; raises DemoError (with the log) when parity is over tolerance."""
    report_path = out / "parity.json"
    log = log_dir / "verify.log"
    cmd = [
        _tool("apt-export"),
        "verify",
        "--bundle",
        str(bundle),
        "--onnx",
        str(export),
        "--json",
        str(report_path),
    ]
    with log.open("wb") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    tail = log_tail(log, 12)
    if code != 0:
        raise DemoError(f"apt-export verify failed (status {code}); see {log}\n--- last lines ---\n{tail}")
    print(tail, flush=True)
    try:
        return json.loads(report_path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------------ episodes


def _wait(predicate, timeout_s: float, what: str, procs: ManagedProcesses, period: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        procs.check_alive()
        if time.monotonic() > deadline:
            logs = ", ".join(str(c.log) for c in procs.children)
            raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}; logs: {logs}")
        time.sleep(period)


def _held_at(joints: list[tuple[float, np.ndarray]], q: np.ndarray, window_s: float) -> bool:
    """Every joint state of the last ``window_s`` (covering at least 90 % of it) within 1e-4 rad of ``q``:
    after a simulation reset the camera has rendered the arm there, so no frame of the old pose is taken
    with the new state (the node's max_skew allows that much)."""
    return (
        len(joints) >= 2
        and joints[-1][0] - joints[0][0] >= window_s * 0.9
        and all(np.allclose(j[1], q, atol=1e-4) for j in joints)
    )


def _at_rest(joints: list[tuple[float, np.ndarray]], window_s: float) -> bool:
    if len(joints) < 2 or joints[-1][0] - joints[0][0] < window_s * 0.9:
        return False
    t = np.array([j[0] for j in joints])
    q = np.stack([j[1] for j in joints])
    speed = np.abs(np.diff(q, axis=0)) / np.maximum(np.diff(t), 1e-3)[:, None]
    return bool(np.max(speed) < SETTLE_SPEED)


def node_overrides(opts: DemoOptions) -> list[str]:
    """``-p`` arguments for the options that change node parameters (latency profile, chunk execution)."""
    args = []
    if opts.latency:
        args += ["-p", f"simulated_latency:={opts.latency}"]
    if opts.chunk_execution:
        args += ["-p", f"chunk_execution:={opts.chunk_execution}"]
    if opts.family == "action_distillation":  # a 3-action chunk (docs/ACTION_DISTILLATION.md): sim.yaml's
        # request threshold (4) and cross-fade (3 actions) are APT's 16-action chunk's; -1 = half the horizon,
        # raised by the measured delay (at most horizon - 1), and a one-action cross-fade
        args += ["-p", "chunk_request_threshold:=-1", "-p", "blending_steps:=1"]
    return args


def chunk_execution_context(opts: DemoOptions, params_file: Path, log_dir: Path) -> dict[str, Any]:
    """The latency profile and the chunk-execution strategy the demo ran with (for report.json)."""
    from apt_policy.runtime.latency import parse_latency

    profile = parse_latency(opts.latency)
    requested = opts.chunk_execution
    if requested is None:
        requested = parameters_from_yaml(params_file).get("chunk_execution", "auto")
    used = sorted(
        {
            m.group(1)
            for log in log_dir.glob("*policy_node.log")
            for m in re.finditer(r"chunk execution (\w+)", log.read_text(errors="replace"))
        }
    )
    return {
        "latency_profile": {
            "name": profile.name,
            "description": profile.describe(),
            "source": profile.source,
        },
        "chunk_execution": {"requested": requested, "used": used[0] if len(used) == 1 else used},
    }


SCHEDULING_PATTERNS = {  # what each process logs once it applied (or was refused) its realtime_priority
    "policy_node": (
        r"stream thread runs SCHED_FIFO priority (\d+)",
        r"could not set SCHED_FIFO priority (\d+)",
    ),
    "fake_franka": (r"threads run SCHED_FIFO priority (\d+)", r"could not set SCHED_FIFO priority (\d+)"),
}


def scheduling_context(log_dir: Path) -> dict[str, str]:
    """How the node's stream thread and fake_franka were scheduled, per the episode logs: "SCHED_FIFO <p>",
    "normal (SCHED_FIFO <p> refused)", "normal", or a mix over episodes (e.g. "SCHED_FIFO 50 in 4 of 5")."""
    result = {}
    for proc, (applied, refused) in SCHEDULING_PATTERNS.items():
        kinds = []
        for log in sorted(log_dir.glob(f"*{proc}.log")):
            text = log.read_text(errors="replace")
            if m := re.search(applied, text):
                kinds.append(f"SCHED_FIFO {m.group(1)}")
            elif m := re.search(refused, text):
                kinds.append(f"normal (SCHED_FIFO {m.group(1)} refused)")
            else:
                kinds.append("normal")
        distinct = sorted(set(kinds))
        if len(distinct) == 1:
            result[proc] = distinct[0]
        elif distinct:
            result[proc] = ", ".join(f"{k} in {kinds.count(k)} of {len(kinds)}" for k in distinct)
    return result


# the arm this long at the start pose before an episode: the camera's frames show it there
START_HOLD_S = 0.25
RESET_TIMEOUT_S = (
    15.0  # a node in FAULT after an episode: ~/reset is retried this long (needs the arm at rest)
)
RECORDED_FROM_THE_START = ("/franka/joint_states", "/apt_policy/status")  # before an episode's start marker
# The node is activated this long after every process is up (the node configured, the arm's joint states
# seen). Fast DDS repeats a participant's announcement every 3 s: two participants that missed each other's
# first ones meet ~3 s late. Each of the 14 command hold-ups (~320 ms) in 94 demo runs of the fourteenth to
# sixteenth sessions began 1.6-3.1 s after the last process started, in ep1, while the node was streaming
# (docs/CONTROL.md, "Seventeenth session").
DISCOVERY_SETTLE_S = 4.0
NODE = "/apt_policy"  # the policy node's name in config/sim.yaml (its services and lifecycle)
ROBOT = "/fake_franka"


def _arrival_log(procs: ManagedProcesses, plan: EpisodePlan) -> Path:
    return procs.log_dir / f"{plan.name}_arrivals.json"


def start_robot_and_node(
    plan: EpisodePlan,
    procs: ManagedProcesses,
    export: Path,
    params_file: Path,
    opts: DemoOptions,
    cameras: list[SimCamera],
) -> None:
    """``apt-fake-franka`` at ``plan``'s start pose (arrivals to its log) and ``apt-policy-node``, once for
    every episode (a restart per episode cost a ~330 ms DDS hold-up now and then: docs/CONTROL.md)."""
    q0 = "[" + ",".join(f"{v:.6f}" for v in plan.start_q) + "]"
    procs.start(
        "fake_franka",
        [
            _tool("apt-fake-franka"),
            "--ros-args",
            "-p",
            f"initial_positions:={q0}",
            "-p",
            f"arrival_log:={_arrival_log(procs, plan)}",
            "-p",
            f"realtime_priority:={CONTROLLER_PRIORITY}",  # above the node (sim.yaml),
        ],
    )
    procs.start(
        "policy_node",
        [
            _tool("apt-policy-node"),
            "--ros-args",
            "--params-file",
            str(params_file),
            "-p",
            "autostart:=false",  # configured and activated by begin_episode, once discovery has settled
            "-p",
            f"model:={export}",
            *node_camera_overrides(cameras),
            *node_overrides(opts),
        ],
    )


def _service(what: str, call: Any, procs: ManagedProcesses, log: Path | None = None) -> Any:
    """Run a service call of the demo; a timeout or a refusal is a DemoError naming the logs (``log``'s
    last lines with a refusal, when given: the node says there why it refused)."""
    try:
        result = call()
    except TimeoutError as exc:
        procs.check_alive()
        raise DemoError(f"{what}: {exc}; logs in {procs.log_dir}") from exc
    ok = result[0] if isinstance(result, tuple) else result
    if not ok:
        procs.check_alive()
        why = f" ({result[1]})" if isinstance(result, tuple) else ""
        where = f"logs in {procs.log_dir}"
        if log is not None:
            where = f"see {log}\n--- last lines ---\n{log_tail(log)}"
        raise DemoError(f"{what} was refused{why}; {where}")
    return result


def begin_episode(plan: EpisodePlan, probe: Any, procs: ManagedProcesses, first: bool) -> None:
    """The arm at the plan's start pose (fake_franka's simulation reset) and the node activated. The first
    episode finds the arm there (fake_franka was just started with it) and the node unconfigured: it is
    configured, then activated once discovery has settled (:func:`settle_discovery`)."""
    from lifecycle_msgs.msg import Transition

    if first:
        _service(
            f"{plan.name}: configuring the policy node (loading and checking the model)",
            lambda: probe.change_state(NODE, Transition.TRANSITION_CONFIGURE),
            procs,
            procs.log_dir / "policy_node.log",
        )
        settle_discovery(probe, procs)
    else:
        start = [float(v) for v in plan.start_q]
        _service(
            f"{plan.name}: putting the arm at its start pose",
            lambda: probe.set_parameters(ROBOT, initial_positions=start),
            procs,
        )
    _service(
        f"{plan.name}: activating the policy node",
        lambda: probe.change_state(NODE, Transition.TRANSITION_ACTIVATE),
        procs,
    )


def settle_discovery(probe: Any, procs: ManagedProcesses) -> None:
    """Wait until every process is up (the node configured, the arm's joint states seen by the demo), the
    recorder records the arm and the node, and DISCOVERY_SETTLE_S have passed since all were up: a late
    DDS discovery then costs no command."""
    _wait(
        lambda: probe.latest_joints() is not None,
        30.0,
        f"fake_franka's joint states; log {procs.log_dir / 'fake_franka.log'}",
        procs,
    )
    all_up = time.monotonic()
    _wait(
        lambda: probe.recording(RECORDED_FROM_THE_START),
        30.0,
        f"apt-record to record {', '.join(RECORDED_FROM_THE_START)}; log {procs.log_dir / 'recorder.log'}",
        procs,
    )
    wait_s = all_up + DISCOVERY_SETTLE_S - time.monotonic()
    if wait_s > 0.0:
        print(f"    letting DDS discovery settle: the node is activated in {wait_s:.1f} s", flush=True)
        time.sleep(wait_s)


def _reset_fault(plan: EpisodePlan, probe: Any, procs: ManagedProcesses) -> None:
    """``~/reset`` until the node accepts it (the arm at rest long enough) or RESET_TIMEOUT_S passed."""
    print(f"    {plan.name}: the node is in FAULT ({probe.status_fault}); ~/reset once the arm is at rest")
    deadline = time.monotonic() + RESET_TIMEOUT_S
    while True:
        try:
            ok, why = probe.trigger(f"{NODE}/reset")
        except TimeoutError as exc:
            procs.check_alive()
            raise DemoError(f"{plan.name}: ~/reset: {exc}; logs in {procs.log_dir}") from exc
        if ok:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"{plan.name}: ~/reset refused for {RESET_TIMEOUT_S:.0f} s: {why}")
        time.sleep(0.2)


def end_episode(
    plan: EpisodePlan, next_plan: EpisodePlan | None, probe: Any, procs: ManagedProcesses
) -> Path:
    """Stop (hold, no instruction) and deactivate the node, then close fake_franka's arrival-log segment of
    ``plan`` (the next one goes to ``next_plan``'s); returns the segment's file. A node left in FAULT is
    reset first (``~/reset``, as an operator would once the arm is at rest): the next episode needs it."""
    from apt_msgs.msg import PolicyStatus
    from lifecycle_msgs.msg import Transition

    status = probe.latest_status()
    if status is not None and status[1] == PolicyStatus.FAULT:
        _reset_fault(plan, probe, procs)
    _service(f"{plan.name}: stopping the policy node", lambda: probe.trigger(f"{NODE}/stop"), procs)
    _service(
        f"{plan.name}: deactivating the policy node",
        lambda: probe.change_state(NODE, Transition.TRANSITION_DEACTIVATE),
        procs,
    )
    following = "" if next_plan is None else str(_arrival_log(procs, next_plan))
    _service(
        f"{plan.name}: closing fake_franka's arrival log",
        lambda: probe.set_parameters(ROBOT, arrival_log=following),
        procs,
    )
    return _arrival_log(procs, plan)


def run_episode(
    plan: EpisodePlan,
    next_plan: EpisodePlan | None,
    first: bool,
    probe: Any,
    procs: ManagedProcesses,
    opts: DemoOptions,
    cameras: list[SimCamera],
) -> EpisodeOutcome:
    """One episode (see the module docstring, step 4)."""
    steal_at_start = steal_seconds()
    sent = [time.monotonic()]
    probe.send_scene(plan.scene_seed)

    def scene_set() -> bool:
        if probe.scene_everywhere(plan.scene_seed):
            return True
        if time.monotonic() - sent[-1] > 2.0:  # idempotent: ask again rather than trust one message
            sent.append(time.monotonic())
            probe.send_scene(plan.scene_seed)
        return False

    _wait(scene_set, 30.0, f"{', '.join(c.node for c in cameras)} to set the scene", procs)
    scene = Scene.from_dict(probe.scene)
    target = scene.block(plan.target)
    probe.clear()
    begin_episode(plan, probe, procs, first)
    start_q = np.asarray(plan.start_q, dtype=np.float64)
    node_log = procs.log_dir / "policy_node.log"
    _wait(
        lambda: (
            probe.latest_status() is not None
            and probe.latest_status()[1] == 0
            and _held_at(probe.joints_since(time.monotonic() - START_HOLD_S), start_q, START_HOLD_S)
            and probe.instruction_pub.get_subscription_count() > 0
        ),
        opts.startup_timeout_s,
        f"the policy node to be ready (IDLE) with the arm at the start pose; log {node_log}",
        procs,
    )
    _wait(  # the recorder subscribes to a new publisher within its discovery period: the episode waits for it
        lambda: probe.recording(RECORDED_FROM_THE_START),
        30.0,
        f"apt-record to record {', '.join(RECORDED_FROM_THE_START)}; log {procs.log_dir / 'recorder.log'}",
        procs,
    )
    probe.clear()
    t0 = time.monotonic()
    probe.send_episode_marker(start_marker(plan, scene.to_dict(), time.time_ns()))
    pending = list(plan.instructions)
    last_instruction_t = max(t for t, _ in plan.instructions)
    rest_since: float | None = None
    print(f"    {plan.name}: {plan.label}  (target {plan.target}, scene seed {plan.scene_seed})", flush=True)
    while True:
        now = time.monotonic() - t0
        while pending and pending[0][0] <= now:
            probe.send_instruction(pending.pop(0)[1])
        procs.check_alive()
        if now > plan.timeout_s:
            break
        if now > last_instruction_t + 0.5:
            recent = probe.joints_since(t0 + now - 0.25)
            latest = probe.latest_joints()
            if latest is not None and _at_rest(recent, 0.25):
                rest_since = now if rest_since is None else rest_since
                tcp = tcp_positions(latest[1][None])[0]
                near = float(np.linalg.norm(tcp - target.reach_point)) < SUCCESS_RADIUS
                if (near and now - rest_since >= SETTLE_TIME_S) or now - rest_since >= STUCK_TIME_S:
                    break
            else:
                rest_since = None
        time.sleep(0.02)
    duration = time.monotonic() - t0
    if plan.instructions[-1][1] != probe.status_instruction and probe.status_instruction != "":
        print(f"    warning: the node reports instruction {probe.status_instruction!r}", flush=True)
    arrivals = end_episode(plan, next_plan, probe, procs)
    with probe._lock:
        joints = [j for j in probe.joints if t0 <= j[0] <= t0 + duration]
        chunks = sum(1 for c in probe.chunks if t0 <= c[0] <= t0 + duration)
    robot_log = procs.log_dir / "fake_franka.log"
    if not joints:
        raise DemoError(f"{plan.name}: no joint states were received; see {robot_log}")
    try:
        segment = json.loads(arrivals.read_text())
        command_t = np.asarray(segment["topics"][TRAJECTORY_TOPIC], dtype=np.float64)
        robot_report = dict(segment["summary"])
    except (OSError, ValueError, KeyError) as exc:
        raise DemoError(f"{plan.name}: fake_franka's arrival log {arrivals} is unreadable ({exc})") from exc
    probe.send_episode_marker(end_marker(plan.name, duration, command_t - t0, robot_report))
    steal_at_end = steal_seconds()
    steal = None if steal_at_start is None or steal_at_end is None else steal_at_end - steal_at_start
    return EpisodeOutcome(plan, scene, joints[-1][1], duration, chunks, steal)


@dataclass(frozen=True)
class EpisodeOutcome:
    """What the demo prints after an episode (the report itself comes from the recording)."""

    plan: EpisodePlan
    scene: Scene
    final_q: np.ndarray
    duration_s: float
    chunks: int
    steal_s: float | None = None  # hypervisor steal during the episode, all CPUs (demo.machine)


def ros_environment(out: Path, domain_id: int | None) -> dict[str, str]:
    """This demo's own DDS domain, loopback discovery (unless ``ROS_AUTOMATIC_DISCOVERY_RANGE`` is set: the
    remote-inference demo reaches an inference node in another network namespace) and ROS logs under
    ``<out>/logs/ros``."""
    domain = domain_id if domain_id is not None else 101 + os.getpid() % 100
    env = {
        "ROS_DOMAIN_ID": str(domain),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") or "LOCALHOST",
        "ROS_LOG_DIR": str((out / "logs" / "ros").resolve()),
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)
    return env


def recorder_command(bag: Path, video_fps: float) -> list[str]:
    """``apt-record`` for the demo: the default topics + the episode markers and the current scene, the
    camera at the video's rate and width."""
    from apt_policy.recording.recorder import DEFAULT_TOPICS

    topics = [*DEFAULT_TOPICS, f"{EPISODE_TOPIC}:std_msgs/msg/String", "/fake_camera/current_scene"]
    exe = Path(sys.executable).parent / "apt-record"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "apt_policy.recording"]
    return [
        *cmd,
        "--ros-args",
        "-p",
        f"output:={bag}",
        "-p",
        f"topics:=[{','.join(repr(t) for t in topics)}]",
        "-p",
        f"cameras:=['{FIRST_IMAGE_TOPIC}']",
        "-p",
        f"camera_rate:={float(video_fps)}",
        "-p",
        f"camera_width:={VIDEO_WIDTH}",
    ]


def run_episodes(
    plans: list[EpisodePlan], export: Path, params_file: Path, opts: DemoOptions, procs: ManagedProcesses
) -> Path:
    """Every episode, recorded by ``apt-record``; returns the recording (closed)."""
    from apt_policy.sim.probe import DemoProbe

    bag = opts.out.resolve() / RECORDING
    if bag.exists():
        shutil.rmtree(bag)
    try:
        cameras = sim_cameras(model_cameras(export))
    except ValueError as exc:
        raise DemoError(str(exc)) from exc
    probe = DemoProbe(EPISODE_TOPIC, tuple(c.current_scene_topic for c in cameras))
    try:
        started = [
            procs.start(cam.node, [_tool("apt-fake-camera"), *cam.arguments(plans[0].scene_seed)])
            for cam in cameras
        ]
        for cam, child in zip(cameras, started, strict=True):  # all start at once; each is waited for
            _wait(
                lambda t=cam.current_scene_topic: t in probe.scenes,
                60.0,
                f"{cam.node} ({cam.name} view on {cam.image_topic}) to start; log {child.log}",
                procs,
            )
        recorder = procs.start("recorder", recorder_command(bag, opts.video_fps))
        _wait(
            lambda: probe.episode_pub.get_subscription_count() > 0,
            60.0,
            f"the recorder to subscribe; log {recorder.log}",
            procs,
        )
        _header(4, 5, f"episodes: {len(plans)} instructions on the simulated FR3")
        start_robot_and_node(plans[0], procs, export, params_file, opts, cameras)
        for i, plan in enumerate(plans):
            t = time.monotonic()
            following = plans[i + 1] if i + 1 < len(plans) else None
            outcome = run_episode(plan, following, i == 0, probe, procs, opts, cameras)
            tcp = tcp_positions(outcome.final_q[None])[0]
            dist = float(np.linalg.norm(tcp - outcome.scene.block(plan.target).reach_point))
            verdict = "success" if dist < SUCCESS_RADIUS else "FAIL"
            steal = "" if outcome.steal_s is None else f"; hypervisor steal {outcome.steal_s * 1e3:.0f} ms"
            opts.steal_s[plan.name] = outcome.steal_s
            print(
                f"    {plan.name}: {verdict}, {dist * 100:.1f} cm from the {plan.target} block after"
                f" {outcome.duration_s:.1f} s, {outcome.chunks} chunks"
                f" ({time.monotonic() - t:.1f} s with the resets between episodes{steal})",
                flush=True,
            )
        time.sleep(0.5)  # the last end marker reaches the recorder
        procs.stop("policy_node")
        procs.stop("fake_franka")
        procs.stop("recorder")
        return bag
    finally:
        procs.stop_all()
        probe.shutdown()


# -------------------------------------------------------------------------------------------------- report


def make_report(
    recordings: list[EpisodeRecording], out: Path, nominal_rate_hz: float, context: dict[str, Any], fps: float
) -> dict[str, Any]:
    """Write report.json, report.png and episode.mp4 (checked readable) in ``out``; returns the report."""
    report = build_report(recordings, nominal_rate_hz, context)
    plot_report(recordings, report, out / "report.png")
    video = out / "episode.mp4"
    written = write_video(recordings, video, fps)
    readable = video_frame_count(video)
    if readable == 0:
        raise DemoError(f"{video} was written ({written} frames) but cv2.VideoCapture cannot read it back")
    report["video"] = {"path": video.name, "frames_written": written, "frames_readable": readable, "fps": fps}
    (out / "report.json").write_text(json.dumps(nan_to_none(report), indent=2) + "\n")
    return report


def run_demo(opts: DemoOptions) -> int:
    out = opts.out.resolve()
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    params_file = (opts.params_file or default_params_file()).resolve()
    if opts.model is None and opts.bundle is not None:
        _header(1, 5, f"model: using --bundle {opts.bundle} (no training)")
        bundle, evaluation = opts.bundle.resolve(), training_evaluation(opts.bundle.resolve())
        _header(2, 5, f"export: apt-export onnx -> {out / 'export'} + apt-export verify")
        t = time.monotonic()
        export = export_bundle(bundle, out / "export", log_dir)
        opts.timings["export_s"] = time.monotonic() - t
    elif opts.model is None:
        _header(1, 5, "model: Stage-2 demo bundle (apt-train demo on first use, cached afterwards)")
        bundle, export, evaluation = obtain_model(opts)
        print(f"    bundle {bundle}\n    export {export}", flush=True)
    else:
        _header(1, 5, f"model: using --model {opts.model} (no training)")
        bundle, export, evaluation = opts.bundle, opts.model.resolve(), {}
        _header(2, 5, "export: given")
    parity: dict[str, Any] = {}
    if bundle is not None:
        t = time.monotonic()
        print("    apt-export verify (PyTorch vs ONNX Runtime)", flush=True)
        parity = verify_export(bundle, export, out, log_dir)
        opts.timings["verify_s"] = time.monotonic() - t
    env = ros_environment(out, opts.domain_id)
    _header(3, 5, f"robot: fake_camera on ROS_DOMAIN_ID {env['ROS_DOMAIN_ID']} (logs in {log_dir})")
    plans = plan_episodes(opts.seed, opts.switch_after_s, opts.timeout_s)
    t = time.monotonic()
    with ManagedProcesses(log_dir, env={**os.environ, **env}) as procs:
        try:
            bag = run_episodes(plans, export, params_file, opts, procs)
        except ProcessDiedError as exc:
            raise DemoError(str(exc)) from exc
    opts.timings["episodes_s"] = time.monotonic() - t
    _header(5, 5, f"report: {out} (from {bag}, {bag_size(bag) / 1e6:.1f} MB)")
    recordings = read_recordings(bag, len(plans))
    opts.timings["total_s"] = time.monotonic() - started
    context = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "model": str(export),
        "bundle": None if bundle is None else str(bundle),
        "params_file": str(params_file),
        "parity": parity.get("summary", parity) if isinstance(parity, dict) else parity,
        "training_evaluation": evaluation,
        "timings_s": dict(opts.timings),
        **chunk_execution_context(opts, params_file, log_dir),
        "scheduling": scheduling_context(log_dir),
        "hypervisor_steal_s": dict(opts.steal_s),
    }
    report = make_report(recordings, out, control_rate_of(params_file), context, opts.video_fps)
    print(format_summary(report), flush=True)
    print(
        f"\nwrote {out / 'report.json'}, {out / 'report.png'}, {out / 'episode.mp4'}"
        f" ({report['video']['frames_readable']} frames); logs in {log_dir}"
        f"\ntotal {opts.timings['total_s']:.0f} s",
        flush=True,
    )
    return 0


def read_recordings(bag: Path, expected: int | None = None) -> list[EpisodeRecording]:
    """The episodes of the demo's recording; DemoError when it cannot be read or misses an episode."""
    try:
        recordings = load_recordings(bag)
    except (OSError, ValueError, KeyError) as exc:
        raise DemoError(f"cannot read the recording {bag}: {exc}") from exc
    if not recordings or (expected is not None and len(recordings) != expected):
        raise DemoError(f"{bag} holds {len(recordings)} complete episodes, expected {expected or '> 0'}")
    return recordings


def rebuild_report(out: Path, params_file: Path | None, fps: float) -> int:
    """--report-only: rebuild the report from ``<out>/recording`` (keeps the saved context)."""
    recordings = read_recordings(out / RECORDING)
    context: dict[str, Any] = {}
    old = out / "report.json"
    if old.is_file():
        context = json.loads(old.read_text()).get("context", {})
    rate = control_rate_of((params_file or default_params_file()).resolve())
    report = make_report(recordings, out, rate, context, fps)
    print(format_summary(report), flush=True)
    return 0
