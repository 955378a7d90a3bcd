"""What one demo episode records, as plain data (no ROS types), read from the demo's MCAP recording.

The demo runs ``apt-record`` beside the robot (``<out>/recording/``, a rosbag2 MCAP directory) and marks
each episode on ``/apt_demo/episode`` (std_msgs/String JSON, recorded like any topic):

* ``{"event": "start", "t0_ns": ..., "plan": {...}, "scene": {...}}`` when the first instruction is sent
  (``t0_ns`` on the system clock, the clock of the bag's receive times);
* ``{"event": "end", "name": ..., "duration_s": ..., "command_t": [...], "robot_report": {...}}`` after the
  node and the arm are stopped: the robot's own arrival times of every command (s from the start, on the
  robot's monotonic clock) and its violation report, which only the robot can measure.

Times are seconds relative to the episode start. The report (``apt_policy.demo.report``) is computed from
these recordings only, so it is rebuilt offline from the bag (``--report-only``) and tested with synthetic
recordings (:func:`save_recordings` writes one as the recorder would).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from apt_policy.data.bag import BagWriter, read_messages
from apt_policy.data.messages import Messages, decode_jpeg
from apt_policy.robots.franka import FR3
from apt_policy.ros.conversions import node_diagnostics

__all__ = [
    "CAMERA_TOPIC",
    "EPISODE_TOPIC",
    "EpisodePlan",
    "EpisodeRecording",
    "end_marker",
    "load_recordings",
    "save_recordings",
    "start_marker",
]

EPISODE_TOPIC = "/apt_demo/episode"
CAMERA_TOPIC = "/camera/camera/color/image_raw/compressed"
JOINTS_TOPIC = "/franka/joint_states"
CHUNK_TOPIC = "/apt_policy/action_chunk"
STATUS_TOPIC = "/apt_policy/status"
DIAGNOSTICS_TOPIC = "/diagnostics"
JOINT_LEAD_S = 0.2  # joint states kept from before the start (the report's trajectories start at rest)


@dataclass(frozen=True)
class EpisodePlan:
    """One episode: scene seed, start pose, and the instructions sent at their times (s after start)."""

    name: str
    scene_seed: int
    target: str  # colour of the block the final instruction names
    instructions: tuple[tuple[float, str], ...]
    start_q: tuple[float, ...]
    timeout_s: float = 12.0

    @property
    def label(self) -> str:
        texts = [text for _, text in self.instructions]
        if len(texts) == 1:
            return texts[0]
        return " -> ".join(f"{text!r} @{t:.1f}s" if t > 0 else repr(text) for t, text in self.instructions)


@dataclass
class EpisodeRecording:
    """Everything measured during one episode (see the module docstring for the time base)."""

    plan: EpisodePlan
    scene: dict[str, Any]  # Scene.to_dict() of the scene the camera rendered
    joint_t: np.ndarray  # (N,) receive times of /franka/joint_states
    joint_q: np.ndarray  # (N, 7) positions
    chunk_t: np.ndarray  # (C,) receive times of ~/action_chunk
    chunk_ms: np.ndarray  # (C,) inference_time_ms of each chunk
    chunk_instruction: list[str]  # (C,) instruction each chunk was conditioned on
    command_t: np.ndarray  # (M,) arrival times of arm commands at the simulated robot
    status_t: np.ndarray  # (S,) receive times of ~/status
    status_state: np.ndarray  # (S,) PolicyStatus.state
    status_interventions: np.ndarray  # (S,) cumulative safety interventions of the node
    status_missed_ticks: np.ndarray  # (S,) cumulative missed ticks
    robot_report: dict[str, Any]  # fake_franka's final ~/violations report
    node_stats: dict[str, float]  # last diagnostics values of the node (tick lateness p99, ...)
    duration_s: float
    frame_t: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (F,) camera frame times
    frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1, 3), np.uint8))  # (F, h, w, 3) RGB


def _plan_dict(plan: EpisodePlan) -> dict[str, Any]:
    return {
        "name": plan.name,
        "scene_seed": plan.scene_seed,
        "target": plan.target,
        "instructions": [list(item) for item in plan.instructions],
        "start_q": list(plan.start_q),
        "timeout_s": plan.timeout_s,
    }


def _plan_of(p: dict[str, Any]) -> EpisodePlan:
    return EpisodePlan(
        name=p["name"],
        scene_seed=int(p["scene_seed"]),
        target=p["target"],
        instructions=tuple((float(t), str(s)) for t, s in p["instructions"]),
        start_q=tuple(float(v) for v in p["start_q"]),
        timeout_s=float(p["timeout_s"]),
    )


def start_marker(plan: EpisodePlan, scene: dict[str, Any], t0_ns: int) -> str:
    """The JSON published on EPISODE_TOPIC when the episode starts (see the module docstring)."""
    return json.dumps({"event": "start", "t0_ns": int(t0_ns), "plan": _plan_dict(plan), "scene": scene})


def end_marker(name: str, duration_s: float, command_t: np.ndarray, robot_report: dict[str, Any]) -> str:
    """The JSON published on EPISODE_TOPIC when the episode's processes are stopped."""
    return json.dumps(
        {
            "event": "end",
            "name": name,
            "duration_s": float(duration_s),
            "command_t": [round(float(t), 7) for t in command_t],
            "robot_report": robot_report,
        }
    )


def _joint_positions(msg: Any) -> np.ndarray | None:
    index = {name: i for i, name in enumerate(msg.name)}
    try:
        return np.array([msg.position[index[n]] for n in FR3.joint_names], dtype=np.float64)
    except (KeyError, IndexError):
        return None


def load_recordings(bag: Path) -> list[EpisodeRecording]:
    """Every episode marked in the bag at ``bag`` (see the module docstring), in order."""
    topics = [EPISODE_TOPIC, JOINTS_TOPIC, CHUNK_TOPIC, STATUS_TOPIC, DIAGNOSTICS_TOPIC, CAMERA_TOPIC]
    messages = list(read_messages(bag, topics))
    markers = [(m.t_ns, json.loads(m.msg.data)) for m in messages if m.topic == EPISODE_TOPIC]
    starts = [(t, d) for t, d in markers if d["event"] == "start"]
    ends = {d["name"]: (t, d) for t, d in markers if d["event"] == "end"}
    out = []
    previous_end = 0
    for _, start in starts:
        plan = _plan_of(start["plan"])
        if plan.name not in ends:
            continue  # interrupted episode
        t_end_marker, end = ends[plan.name]
        since, previous_end = previous_end, t_end_marker
        t0 = int(start["t0_ns"])
        duration = float(end["duration_s"])
        t_end = t0 + int(duration * 1e9)
        joints, chunks, statuses, frames = [], [], [], []
        baseline = (0, 0)
        node_stats: dict[str, float] = {}
        for m in messages:
            t = (m.t_ns - t0) * 1e-9
            if m.topic == JOINTS_TOPIC and t0 - JOINT_LEAD_S * 1e9 <= m.t_ns <= t_end:
                q = _joint_positions(m.msg)
                if q is not None:
                    joints.append((t, q))
            elif m.topic == CHUNK_TOPIC and t0 <= m.t_ns <= t_end:
                chunks.append((t, float(m.msg.inference_time_ms), str(m.msg.instruction)))
            elif m.topic == STATUS_TOPIC and m.t_ns <= t_end:
                counters = (int(m.msg.safety_interventions), int(m.msg.missed_ticks))
                if since < m.t_ns < t0:
                    baseline = counters  # cumulative since this episode's node started: count from t0
                elif m.t_ns >= t0:
                    statuses.append((t, int(m.msg.state), *counters))
            elif m.topic == DIAGNOSTICS_TOPIC and t0 <= m.t_ns <= t_end_marker:
                node_stats = node_diagnostics(m.msg) or node_stats
            elif m.topic == CAMERA_TOPIC and t0 <= m.t_ns <= t_end:
                frames.append((t, decode_jpeg(m.msg.data)))
        if not joints:
            raise ValueError(f"{plan.name}: no joint states in {bag}")
        out.append(
            EpisodeRecording(
                plan=plan,
                scene=start["scene"],
                joint_t=np.array([j[0] for j in joints]),
                joint_q=np.stack([j[1] for j in joints]),
                chunk_t=np.array([c[0] for c in chunks]),
                chunk_ms=np.array([c[1] for c in chunks]),
                chunk_instruction=[c[2] for c in chunks],
                command_t=np.asarray(end["command_t"], dtype=np.float64),
                status_t=np.array([s[0] for s in statuses]),
                status_state=np.array([s[1] for s in statuses], dtype=np.int64),
                status_interventions=np.array([s[2] - baseline[0] for s in statuses], dtype=np.int64),
                status_missed_ticks=np.array([s[3] - baseline[1] for s in statuses], dtype=np.int64),
                robot_report=end["robot_report"],
                node_stats=node_stats,
                duration_s=duration,
                frame_t=np.array([f[0] for f in frames]),
                frames=np.stack([f[1] for f in frames]) if frames else np.zeros((0, 1, 1, 3), np.uint8),
            )
        )
    return out


TYPES = {
    EPISODE_TOPIC: "std_msgs/msg/String",
    JOINTS_TOPIC: "sensor_msgs/msg/JointState",
    CHUNK_TOPIC: "apt_msgs/msg/ActionChunk",
    STATUS_TOPIC: "apt_msgs/msg/PolicyStatus",
    DIAGNOSTICS_TOPIC: "diagnostic_msgs/msg/DiagnosticArray",
    CAMERA_TOPIC: "sensor_msgs/msg/CompressedImage",
}


def save_recordings(
    recordings: list[EpisodeRecording], bag: Path, t_base_ns: int = 1_800_000_000 * 10**9
) -> Path:
    """Write ``recordings`` as the recorder and the demo would have (episode markers, joint states, chunks,
    statuses, diagnostics, JPEG frames): synthetic bags for tests, or old recordings converted."""
    m = Messages(TYPES.values())
    items: list[tuple[int, str, bytes]] = []
    t0 = t_base_ns
    for rec in recordings:
        ns = lambda t, t0=t0: t0 + round(float(t) * 1e9)  # noqa: E731
        items.append(
            (t0, EPISODE_TOPIC, m.cdr(TYPES[EPISODE_TOPIC], data=start_marker(rec.plan, rec.scene, t0)))
        )
        for t, q in zip(rec.joint_t, rec.joint_q, strict=True):
            msg = m.cdr(
                TYPES[JOINTS_TOPIC],
                header=m.header(ns(t)),
                name=list(FR3.joint_names),
                position=np.asarray(q, np.float64),
                velocity=np.zeros(0),
                effort=np.zeros(0),
            )
            items.append((ns(t), JOINTS_TOPIC, msg))
        for i, (t, ms, text) in enumerate(zip(rec.chunk_t, rec.chunk_ms, rec.chunk_instruction, strict=True)):
            msg = m.cdr(
                TYPES[CHUNK_TOPIC],
                header=m.header(ns(t)),
                chunk_id=i,
                instruction=text,
                action_names=[],
                dt=0.0,
                horizon=0,
                action_dim=0,
                actions=np.zeros(0, np.float32),
                inference_time_ms=float(ms),
                backend="",
                client_id="",
                request_id=0,
                error="",
            )
            items.append((ns(t), CHUNK_TOPIC, msg))
        for t, state, inter, missed in zip(
            rec.status_t, rec.status_state, rec.status_interventions, rec.status_missed_ticks, strict=True
        ):
            msg = m.cdr(
                TYPES[STATUS_TOPIC],
                header=m.header(ns(t)),
                state=int(state),
                instruction="",
                backend="",
                model_id="",
                inference_latency_p50_ms=0.0,
                inference_latency_p99_ms=0.0,
                control_rate_hz=0.0,
                actions_left=0,
                ticks=0,
                missed_ticks=int(missed),
                chunks_produced=0,
                safety_interventions=int(inter),
                last_fault="",
            )
            items.append((ns(t), STATUS_TOPIC, msg))
        if rec.node_stats:
            kv = [
                m.new("diagnostic_msgs/msg/KeyValue", key=k, value=repr(v)) for k, v in rec.node_stats.items()
            ]
            status = m.new(
                "diagnostic_msgs/msg/DiagnosticStatus",
                level=b"\x00"[0],
                name="apt_policy: node",
                message="",
                hardware_id="",
                values=kv,
            )
            t_end = ns(rec.duration_s)
            items.append(
                (
                    t_end,
                    DIAGNOSTICS_TOPIC,
                    m.cdr(TYPES[DIAGNOSTICS_TOPIC], header=m.header(t_end), status=[status]),
                )
            )
        for t, frame in zip(rec.frame_t, rec.frames, strict=True):
            _, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
            msg = m.cdr(
                TYPES[CAMERA_TOPIC], header=m.header(ns(t)), format="png", data=np.frombuffer(buf, np.uint8)
            )
            items.append((ns(t), CAMERA_TOPIC, msg))
        t_end = ns(rec.duration_s) + 1
        end = end_marker(rec.plan.name, rec.duration_s, rec.command_t, rec.robot_report)
        items.append((t_end, EPISODE_TOPIC, m.cdr(TYPES[EPISODE_TOPIC], data=end)))
        t0 = t_end + 10**9
    with BagWriter(bag) as writer:
        for topic, type_name in TYPES.items():
            writer.add_topic(topic, type_name)
        for t, topic, data in sorted(items, key=lambda item: item[0]):
            writer.write(topic, t, data)
    return Path(bag)
