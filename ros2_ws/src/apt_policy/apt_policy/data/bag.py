"""Recordings: rosbag2 directories of MCAP files, written with ``mcap`` and read with ``rosbags``.

Layout (what ``ros2 bag record -s mcap`` writes, version 9)::

    <bag>/metadata.yaml            topics (name, type, cdr, QoS), per-file times and counts
    <bag>/<bag>_0.mcap             profile "ros2": ros2msg schemas (full .msg text), cdr channels,
    <bag>/<bag>_1.mcap ...         zstd chunks, summary + message index (seekable)

:class:`BagWriter` takes already-serialised CDR messages (a recorder's raw subscriptions: nothing is
deserialised on the way to disk), splits files by size and duration, and keeps the whole bag under a cap by
deleting its oldest closed files. ``metadata.yaml`` is rewritten whenever a file is closed, so a bag whose
recorder was killed is readable up to its last closed file.

:func:`read_messages` reads any rosbag2 bag (MCAP or SQLite) through ``rosbags``' ``AnyReader``, which decodes
with the schemas stored in the bag: no ROS installation needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apt_policy.data.msgdefs import message_definition

__all__ = [
    "BagWriter",
    "Message",
    "SplitPolicy",
    "bag_files",
    "bag_size",
    "qos_profile",
    "read_messages",
    "topics_of",
]


@dataclass(frozen=True)
class SplitPolicy:
    """When to start a new file and how much disk the bag may use (0 = no limit)."""

    max_file_bytes: int = 256 * 1024 * 1024
    max_file_s: float = 0.0
    max_total_bytes: int = 0  # oldest closed files are deleted to stay under it

    def __post_init__(self) -> None:
        if self.max_total_bytes and (
            not self.max_file_bytes or self.max_file_bytes * 2 > self.max_total_bytes
        ):
            raise ValueError(
                "max_total_bytes needs max_file_bytes <= max_total_bytes / 2 (files are the unit)"
            )


_INFINITE = {"sec": 9223372036, "nsec": 854775807}  # rmw's "default/infinite" duration


def qos_profile(reliable: bool = True, transient_local: bool = False, depth: int = 10) -> dict[str, Any]:
    """One entry of rosbag2 v9's ``offered_qos_profiles``."""
    return {
        "history": "keep_last",
        "depth": depth,
        "reliability": "reliable" if reliable else "best_effort",
        "durability": "transient_local" if transient_local else "volatile",
        "deadline": dict(_INFINITE),
        "lifespan": dict(_INFINITE),
        "liveliness": "automatic",
        "liveliness_lease_duration": dict(_INFINITE),
        "avoid_ros_namespace_conventions": False,
    }


@dataclass
class _Topic:
    name: str
    type: str
    msgdef: str
    qos: list[dict[str, Any]]
    count: int = 0


@dataclass
class _File:
    path: Path
    start_ns: int = 0
    end_ns: int = 0
    count: int = 0
    size: int = 0
    channels: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class BagWriter:
    """Write serialised ROS 2 messages to a rosbag2 MCAP directory (see the module docstring).

    Not thread-safe: one writer thread owns it. ``add_topic`` before the first ``write`` of that topic.
    """

    def __init__(
        self,
        path: str | Path,
        split: SplitPolicy | None = None,
        chunk_bytes: int = 1024 * 1024,
        ros_distro: str = "kilted",
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and any(self.path.iterdir()):
            raise FileExistsError(f"{self.path} exists and is not empty")
        self.path.mkdir(parents=True, exist_ok=True)
        self.split = split or SplitPolicy()
        if self.split.max_file_bytes:  # the file grows a chunk at a time: keep chunks small against it
            chunk_bytes = min(chunk_bytes, max(self.split.max_file_bytes // 8, 16 * 1024))
        self.chunk_bytes = chunk_bytes
        self.ros_distro = ros_distro
        self.topics: dict[str, _Topic] = {}
        self.files: list[_File] = []  # closed, still on disk
        self.deleted: list[str] = []
        self._index = 0
        self._current: _File | None = None
        self._writer: Any = None
        self._stream: Any = None
        self._schemas: dict[str, int] = {}
        self._opened_at = 0.0
        self._total_closed = 0

    # ----------------------------------------------------------------------------------------- topics
    def add_topic(
        self,
        name: str,
        type_name: str,
        msgdef: str | None = None,
        qos: list[dict[str, Any]] | None = None,
    ) -> None:
        """Declare a topic (``type_name`` like ``sensor_msgs/msg/Image``); the schema text is looked up
        from the .msg files when not given. ``qos``: the publishers' profiles (:func:`qos_profile`)."""
        if name in self.topics:
            if self.topics[name].type != type_name:
                raise ValueError(f"{name}: already recorded as {self.topics[name].type}, not {type_name}")
            return
        self.topics[name] = _Topic(name, type_name, msgdef or message_definition(type_name), list(qos or []))

    # ------------------------------------------------------------------------------------------ files
    def _open(self) -> None:
        from mcap.writer import CompressionType, Writer

        f = _File(self.path / f"{self.path.name}_{self._index}.mcap")
        self._index += 1
        self._stream = f.path.open("wb")
        self._writer = Writer(self._stream, chunk_size=self.chunk_bytes, compression=CompressionType.ZSTD)
        self._writer.start(profile="ros2", library="apt_policy.data.bag")
        self._schemas = {}
        self._current = f
        self._opened_at = time.monotonic()

    def _channel(self, topic: _Topic) -> int:
        assert self._current is not None
        cid = self._current.channels.get(topic.name)
        if cid is None:
            sid = self._schemas.get(topic.type)
            if sid is None:
                sid = self._writer.register_schema(topic.type, "ros2msg", topic.msgdef.encode())
                self._schemas[topic.type] = sid
            meta = {"offered_qos_profiles": yaml.safe_dump(topic.qos, sort_keys=False)} if topic.qos else {}
            cid = self._writer.register_channel(topic.name, "cdr", sid, meta)
            self._current.channels[topic.name] = cid
        return cid

    def _close_current(self) -> None:
        if self._current is None:
            return
        self._writer.finish()
        self._stream.close()
        self._current.size = self._current.path.stat().st_size
        self.files.append(self._current)
        self._total_closed += self._current.size
        self._current = None
        self._enforce_cap()
        self.write_metadata()

    def _enforce_cap(self) -> None:
        cap = self.split.max_total_bytes
        while cap and len(self.files) > 1 and self._total_closed > cap - self.split.max_file_bytes:
            old = self.files.pop(0)
            self._total_closed -= old.size
            old.path.unlink(missing_ok=True)
            self.deleted.append(old.path.name)

    def _due_for_split(self, t_ns: int) -> bool:
        f = self._current
        if f is None or f.count == 0:
            return False
        s = self.split
        if s.max_file_bytes and self._stream.tell() >= s.max_file_bytes - self.chunk_bytes:
            return True
        return bool(s.max_file_s and (t_ns - f.start_ns) * 1e-9 >= s.max_file_s)

    # ------------------------------------------------------------------------------------------ write
    def write(self, topic: str, t_ns: int, data: bytes, publish_ns: int | None = None) -> None:
        """Append one serialised (CDR) message received at ``t_ns`` (ns since the epoch)."""
        if self._due_for_split(t_ns):
            self._close_current()
        if self._current is None:
            self._open()
        f = self._current
        assert f is not None
        t = self.topics[topic]
        self._writer.add_message(self._channel(t), int(t_ns), bytes(data), int(publish_ns or t_ns), t.count)
        if f.count == 0:
            f.start_ns = f.end_ns = int(t_ns)
        f.start_ns, f.end_ns = min(f.start_ns, int(t_ns)), max(f.end_ns, int(t_ns))
        f.count += 1
        f.counts[topic] = f.counts.get(topic, 0) + 1
        t.count += 1

    def size(self) -> int:
        """Bytes on disk now (closed files + the open one as written so far)."""
        return self._total_closed + (self._stream.tell() if self._current is not None else 0)

    def close(self) -> Path:
        """Finish the open file and write metadata.yaml; returns the bag directory."""
        self._close_current()
        self.write_metadata()
        return self.path

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------- metadata
    def write_metadata(self) -> None:
        files = self.files
        start = min((f.start_ns for f in files if f.count), default=0)
        end = max((f.end_ns for f in files if f.count), default=0)
        info = {
            "version": 9,
            "storage_identifier": "mcap",
            "duration": {"nanoseconds": end - start},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": sum(f.count for f in files),
            "topics_with_message_count": [
                {
                    "topic_metadata": {
                        "name": t.name,
                        "type": t.type,
                        "serialization_format": "cdr",
                        "offered_qos_profiles": t.qos,
                        "type_description_hash": "",
                    },
                    "message_count": sum(f.counts.get(t.name, 0) for f in files),
                }
                for t in self.topics.values()
            ],
            "compression_format": "",
            "compression_mode": "",
            "relative_file_paths": [f.path.name for f in files],
            "files": [
                {
                    "path": f.path.name,
                    "starting_time": {"nanoseconds_since_epoch": f.start_ns},
                    "duration": {"nanoseconds": f.end_ns - f.start_ns},
                    "message_count": f.count,
                }
                for f in files
            ],
            "custom_data": {"writer": "apt_policy.data.bag", "deleted_files": ",".join(self.deleted)},
            "ros_distro": self.ros_distro,
        }
        tmp = self.path / "metadata.yaml.tmp"
        tmp.write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False))
        os.replace(tmp, self.path / "metadata.yaml")


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Message:
    """One decoded message: topic, type, receive time (ns since the epoch) and the rosbags message."""

    topic: str
    type: str
    t_ns: int
    msg: Any


def read_messages(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[Message]:
    """Every message of the bag at ``path`` (a bag directory) in receive-time order, decoded."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)]) as reader:
        wanted = set(topics) if topics is not None else None
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield Message(conn.topic, conn.msgtype, int(t_ns), reader.deserialize(raw, conn.msgtype))


def topics_of(path: str | Path) -> dict[str, tuple[str, int]]:
    """{topic: (type, message count)} from the bag's metadata (what ``ros2 bag info`` lists)."""
    from rosbags.highlevel import AnyReader

    with AnyReader([Path(path)]) as reader:
        out: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            _, count = out.get(c.topic, (c.msgtype, 0))
            out[c.topic] = (c.msgtype, count + c.msgcount)
        return out


def bag_files(path: str | Path) -> list[Path]:
    """The MCAP files of a bag directory, in order."""
    meta = yaml.safe_load((Path(path) / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return [Path(path) / p for p in meta["relative_file_paths"]]


def bag_size(path: str | Path) -> int:
    """Bytes of every file in the bag directory."""
    return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())
