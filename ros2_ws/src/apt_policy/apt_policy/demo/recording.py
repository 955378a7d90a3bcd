"""What one demo episode records, as plain data (no ROS types), saved to and loaded from disk.

Times are seconds on the monotonic clock relative to the episode start (the first instruction). The report
(``apt_policy.demo.report``) is computed from these recordings only, so it can be rebuilt offline and is
tested with synthetic recordings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EpisodePlan", "EpisodeRecording", "load_recordings", "save_recordings"]


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

    def to_meta(self) -> dict[str, Any]:
        return {
            "plan": {
                "name": self.plan.name,
                "scene_seed": self.plan.scene_seed,
                "target": self.plan.target,
                "instructions": [list(item) for item in self.plan.instructions],
                "start_q": list(self.plan.start_q),
                "timeout_s": self.plan.timeout_s,
            },
            "scene": self.scene,
            "chunk_instruction": list(self.chunk_instruction),
            "robot_report": self.robot_report,
            "node_stats": self.node_stats,
            "duration_s": self.duration_s,
        }


_ARRAYS = (
    "joint_t",
    "joint_q",
    "chunk_t",
    "chunk_ms",
    "command_t",
    "status_t",
    "status_state",
    "status_interventions",
    "status_missed_ticks",
    "frame_t",
    "frames",
)


def save_recordings(recordings: list[EpisodeRecording], path: Path) -> Path:
    """Write ``path`` (.npz, uncompressed) holding every array and a JSON ``meta`` entry."""
    arrays: dict[str, np.ndarray] = {}
    for i, rec in enumerate(recordings):
        for name in _ARRAYS:
            arrays[f"ep{i}_{name}"] = np.asarray(getattr(rec, name))
    meta = [rec.to_meta() for rec in recordings]
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def load_recordings(path: Path) -> list[EpisodeRecording]:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        out = []
        for i, m in enumerate(meta):
            p = m["plan"]
            plan = EpisodePlan(
                name=p["name"],
                scene_seed=int(p["scene_seed"]),
                target=p["target"],
                instructions=tuple((float(t), str(s)) for t, s in p["instructions"]),
                start_q=tuple(float(v) for v in p["start_q"]),
                timeout_s=float(p["timeout_s"]),
            )
            arrays = {name: data[f"ep{i}_{name}"] for name in _ARRAYS}
            out.append(
                EpisodeRecording(
                    plan=plan,
                    scene=m["scene"],
                    chunk_instruction=list(m["chunk_instruction"]),
                    robot_report=m["robot_report"],
                    node_stats=m["node_stats"],
                    duration_s=float(m["duration_s"]),
                    **arrays,
                )
            )
    return out
