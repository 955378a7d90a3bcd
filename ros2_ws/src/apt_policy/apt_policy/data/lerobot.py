"""``apt-data export``: a recording -> LeRobotDataset v3.0 (parquet + mp4 + meta), written with pyarrow,
pandas and PyAV (lerobot 0.4.x, the v3 writer, pins torch < 2.11 and does not install beside torch 2.13).

Layout written (lerobot's ``CODEBASE_VERSION = "v3.0"``; one chunk, one file per kind: small datasets)::

    <out>/meta/info.json                     codebase_version v3.0, fps, features, path templates, totals
    <out>/meta/stats.json                    per feature min / max / mean / std / count / q01..q99
    <out>/meta/tasks.parquet                 index: task (the instruction), column task_index
    <out>/meta/episodes/chunk-000/file-000.parquet
                                             per episode: episode_index, tasks, length, data/* and
                                             videos/<key>/* file indices, dataset_from/to_index,
                                             videos/<key>/from/to_timestamp, stats/<feature>/<stat>
    <out>/data/chunk-000/file-000.parquet    one row per frame: observation.state, action, intervention,
                                             timestamp, frame_index, episode_index, index, task_index
    <out>/videos/observation.images.<cam>/chunk-000/file-000.mp4
                                             every episode's frames back to back (h264, yuv420p)

Frames are sampled at ``fps`` from each episode's start (:mod:`apt_policy.data.episodes`): the newest camera
frame, joint state and arm command received at or before the frame time. ``action`` is the first point of
the newest JointTrajectory command (what the arm was told to do next; the state when none was sent yet);
``intervention`` is 1 inside a human-takeover interval.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apt_policy.data.bag import read_messages
from apt_policy.data.episodes import Episode, TopicNames, episodes_from_messages
from apt_policy.data.messages import decode_jpeg

__all__ = ["ExportOptions", "ExportResult", "export_lerobot", "read_lerobot"]

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
QUANTILES = (1, 10, 50, 90, 99)


@dataclass(frozen=True)
class ExportOptions:
    fps: float = 10.0
    joint_topic: str = "/franka/joint_states"
    command_topic: str = "/fr3_arm_controller/joint_trajectory"
    cameras: Mapping[str, str] | None = None  # compressed topic -> name; None: every CompressedImage topic
    robot_type: str = "fr3"
    codec: str = "libx264"
    crf: int = 18
    gop: int = 2  # lerobot's default keyframe interval: cheap random access
    min_frames: int = 2
    topics: TopicNames = field(default_factory=TopicNames)


@dataclass(frozen=True)
class ExportResult:
    root: Path
    episodes: int
    frames: int
    tasks: list[str]
    cameras: list[str]
    skipped: list[str]


def _camera_name(topic: str) -> str:
    parts = [p for p in topic.split("/") if p and p not in ("compressed", "image_raw", "camera")]
    return re.sub(r"\W", "_", "_".join(parts)) or "camera"


class _Latest:
    """The newest sample at or before a time, over a time-sorted list."""

    def __init__(self, samples: list[tuple[int, Any]]) -> None:
        samples = sorted(samples, key=lambda s: s[0])  # split files and writer threads need not be in order
        self.t = np.array([s[0] for s in samples], dtype=np.int64)
        self.v = [s[1] for s in samples]

    def at(self, t_ns: int) -> Any:
        if not self.v:
            return None
        i = int(np.searchsorted(self.t, t_ns, side="right")) - 1
        return self.v[i] if i >= 0 else None

    def any_before(self, t_ns: int) -> bool:
        return bool(len(self.t)) and int(self.t[0]) <= t_ns


def _stats(values: np.ndarray) -> dict[str, Any]:
    """lerobot's per-feature statistics over axis 0 (lists, as in stats.json)."""
    v = np.asarray(values, dtype=np.float64)
    out = {
        "min": v.min(axis=0),
        "max": v.max(axis=0),
        "mean": v.mean(axis=0),
        "std": v.std(axis=0),
        "count": np.array([len(v)]),
    }
    for q in QUANTILES:
        out[f"q{q:02d}"] = np.percentile(v, q, axis=0)
    return {k: np.asarray(x).tolist() for k, x in out.items()}


def _image_stats(frames: list[np.ndarray]) -> dict[str, Any]:
    """Per-channel statistics of RGB frames scaled to [0, 1], shaped (3, 1, 1) like lerobot's."""
    pixels = np.concatenate([f.reshape(-1, 3) for f in frames[:: max(1, len(frames) // 100)]]) / 255.0
    s = _stats(pixels)
    return {
        k: (np.asarray(v).reshape(-1, 1, 1).tolist() if k != "count" else [len(frames)]) for k, v in s.items()
    }


def _encode_video(path: Path, frames: list[np.ndarray], fps: float, codec: str, crf: int, gop: int) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        stream.options = {"crf": str(crf), "g": str(gop)} if codec in ("libx264", "libsvtav1") else {}
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(rgb[: h - h % 2, : w - w % 2]), format="rgb24"
            )
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def export_lerobot(bag: str | Path, out: str | Path, options: ExportOptions | None = None) -> ExportResult:
    """Write the LeRobotDataset v3.0 of every episode in ``bag`` to ``out`` (see the module docstring)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    opts = options or ExportOptions()
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    messages = list(read_messages(bag))
    episodes = episodes_from_messages((m for m in messages if m.topic in opts.topics.all()), opts.topics)
    camera_topics = dict(opts.cameras) if opts.cameras is not None else {}
    if opts.cameras is None:
        for m in messages:
            if m.type == "sensor_msgs/msg/CompressedImage" and m.topic not in camera_topics:
                camera_topics[m.topic] = _camera_name(m.topic)
    joints = _Latest([(m.t_ns, m.msg) for m in messages if m.topic == opts.joint_topic])
    commands = _Latest([(m.t_ns, m.msg) for m in messages if m.topic == opts.command_topic])
    frames_by_cam = {
        topic: _Latest([(m.t_ns, m.msg) for m in messages if m.topic == topic]) for topic in camera_topics
    }
    if not joints.v:
        raise ValueError(f"{bag}: no {opts.joint_topic} messages")
    empty = [topic for topic, frames in frames_by_cam.items() if not frames.v]
    if empty:
        raise ValueError(f"{bag}: no messages on camera topic(s) {empty}")
    names = list(joints.v[0].name)
    period = round(1e9 / opts.fps)
    # A frame needs a joint state and an image of every camera at or before its time: grid points before
    # the recorder's first sample of each (its start-up) are left out rather than filled from the future.
    ready_ns = max(int(series.t[0]) for series in (joints, *frames_by_cam.values()))

    rows: dict[str, list[Any]] = {
        k: []
        for k in (
            "observation.state",
            "action",
            "intervention",
            "timestamp",
            "frame_index",
            "episode_index",
            "index",
            "task_index",
        )
    }
    videos: dict[str, list[np.ndarray]] = {name: [] for name in camera_topics.values()}
    tasks: dict[str, int] = {}
    ep_rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    decoded: dict[int, np.ndarray] = {}
    kept: list[Episode] = []
    for ep in episodes:
        late = max(0, -(-(ready_ns - ep.start_ns) // period))  # grid points before ready_ns
        times = list(range(ep.start_ns + late * period, ep.end_ns, period))
        if len(times) < opts.min_frames:
            skipped.append(f"episode {ep.index} ({ep.instruction!r}): {len(times)} frames")
            continue
        task = tasks.setdefault(ep.instruction, len(tasks))
        e = len(kept)
        first = len(rows["index"])
        state = []
        action = []
        for k, t in enumerate(times):
            js = joints.at(t)
            q = np.array([js.position[list(js.name).index(n)] for n in names], dtype=np.float32)
            cmd = commands.at(t) if commands.any_before(t) else None
            if cmd is not None and len(cmd.points):
                index = {n: i for i, n in enumerate(cmd.joint_names)}
                a = np.array(
                    [cmd.points[0].positions[index[n]] if n in index else q[j] for j, n in enumerate(names)],
                    np.float32,
                )
            else:
                a = q.copy()
            state.append(q)
            action.append(a)
            rows["observation.state"].append(q)
            rows["action"].append(a)
            rows["intervention"].append(int(ep.taken_over(t)))
            rows["timestamp"].append(np.float32(k / opts.fps))
            rows["frame_index"].append(k)
            rows["episode_index"].append(e)
            rows["index"].append(first + k)
            rows["task_index"].append(task)
            for topic, name in camera_topics.items():
                msg = frames_by_cam[topic].at(t)
                if id(msg) not in decoded:
                    decoded.clear()
                    decoded[id(msg)] = decode_jpeg(msg.data)
                videos[name].append(decoded[id(msg)])
        n = len(times)
        ep_row: dict[str, Any] = {
            "episode_index": e,
            "tasks": [ep.instruction],
            "length": n,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": first,
            "dataset_to_index": first + n,
        }
        for name in camera_topics.values():
            key = f"observation.images.{name}"
            ep_row[f"videos/{key}/chunk_index"] = 0
            ep_row[f"videos/{key}/file_index"] = 0
            ep_row[f"videos/{key}/from_timestamp"] = first / opts.fps
            ep_row[f"videos/{key}/to_timestamp"] = (first + n) / opts.fps
        ep_row["meta/episodes/chunk_index"] = 0
        ep_row["meta/episodes/file_index"] = 0
        for feature, values in (("observation.state", state), ("action", action)):
            for stat, v in _stats(np.stack(values)).items():
                ep_row[f"stats/{feature}/{stat}"] = v
        ep_row["apt/outcome"] = ep.outcome
        ep_row["apt/start_ns"] = ep.start_ns
        ep_row["apt/first_frame_ns"] = times[0]  # later than start_ns when the recording started late
        ep_rows.append(ep_row)
        kept.append(ep)
    if not kept:
        raise ValueError(f"{bag}: no episode with at least {opts.min_frames} frames ({'; '.join(skipped)})")

    dim = len(names)
    vec = pa.list_(pa.float32(), dim)
    table = pa.table(
        {
            "observation.state": pa.array([v.tolist() for v in rows["observation.state"]], type=vec),
            "action": pa.array([v.tolist() for v in rows["action"]], type=vec),
            "intervention": pa.array(rows["intervention"], type=pa.int64()),
            "timestamp": pa.array(rows["timestamp"], type=pa.float32()),
            "frame_index": pa.array(rows["frame_index"], type=pa.int64()),
            "episode_index": pa.array(rows["episode_index"], type=pa.int64()),
            "index": pa.array(rows["index"], type=pa.int64()),
            "task_index": pa.array(rows["task_index"], type=pa.int64()),
        }
    )
    data_path = root / DATA_PATH.format(chunk_index=0, file_index=0)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, data_path)
    (root / EPISODES_PATH).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(ep_rows).to_parquet(root / EPISODES_PATH, index=False)
    pd.DataFrame({"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task")).to_parquet(
        root / "meta" / "tasks.parquet"
    )

    scalar = {"dtype": "int64", "shape": [1], "names": None}
    features: dict[str, Any] = {
        "observation.state": {"dtype": "float32", "shape": [dim], "names": names},
        "action": {"dtype": "float32", "shape": [dim], "names": names},
        "intervention": dict(scalar),
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": dict(scalar),
        "episode_index": dict(scalar),
        "index": dict(scalar),
        "task_index": dict(scalar),
    }
    stats: dict[str, Any] = {
        "observation.state": _stats(np.stack(rows["observation.state"])),
        "action": _stats(np.stack(rows["action"])),
        "intervention": _stats(np.asarray(rows["intervention"])[:, None]),
        "timestamp": _stats(np.asarray(rows["timestamp"])[:, None]),
        "frame_index": _stats(np.asarray(rows["frame_index"])[:, None]),
        "episode_index": _stats(np.asarray(rows["episode_index"])[:, None]),
        "index": _stats(np.asarray(rows["index"])[:, None]),
        "task_index": _stats(np.asarray(rows["task_index"])[:, None]),
    }
    for name, frames in videos.items():
        key = f"observation.images.{name}"
        _encode_video(
            root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0),
            frames,
            opts.fps,
            opts.codec,
            opts.crf,
            opts.gop,
        )
        h, w = frames[0].shape[:2]
        h, w = h - h % 2, w - w % 2
        features[key] = {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": h,
                "video.width": w,
                "video.codec": {"libx264": "h264", "libsvtav1": "av1"}.get(opts.codec, opts.codec),
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": opts.fps,
                "video.channels": 3,
                "has_audio": False,
            },
        }
        stats[key] = _image_stats(frames)
    total = len(rows["index"])
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": opts.robot_type,
        "total_episodes": len(kept),
        "total_frames": total,
        "total_tasks": len(tasks),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": int(opts.fps) if float(opts.fps).is_integer() else opts.fps,
        "splits": {"train": f"0:{len(kept)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if videos else None,
        "features": features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4) + "\n")
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4) + "\n")
    return ExportResult(root, len(kept), total, list(tasks), list(videos), skipped)


def read_lerobot(root: str | Path) -> dict[str, Any]:
    """A v3.0 dataset read back with pyarrow / PyAV only (the checks of the tests and ``apt-data``):
    info, tasks, episodes (list of dicts), data columns (numpy) and every video's decoded RGB frames."""
    import av
    import pandas as pd
    import pyarrow.parquet as pq

    root = Path(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    data = pq.read_table(root / DATA_PATH.format(chunk_index=0, file_index=0))
    columns = {name: np.asarray(data.column(name).to_pylist()) for name in data.column_names}
    tasks = pd.read_parquet(root / "meta" / "tasks.parquet")
    episodes = pd.read_parquet(root / EPISODES_PATH).to_dict("records")
    videos: dict[str, np.ndarray] = {}
    for key, feature in info["features"].items():
        if feature["dtype"] == "video":
            path = root / info["video_path"].format(video_key=key, chunk_index=0, file_index=0)
            with av.open(str(path)) as container:
                videos[key] = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return {
        "info": info,
        "tasks": {str(task): int(row.task_index) for task, row in tasks.iterrows()},
        "episodes": episodes,
        "data": columns,
        "videos": videos,
    }


def summary_lines(result: ExportResult) -> Sequence[str]:
    return [
        f"wrote {result.root}: LeRobotDataset {CODEBASE_VERSION}, {result.episodes} episodes,"
        f" {result.frames} frames, {len(result.tasks)} tasks, cameras {result.cameras}",
        *(f"skipped {s}" for s in result.skipped),
    ]
