"""ROS 2 messages without ROS: a rosbags typestore built from the .msg files, and CDR (de)serialisation.

Used by the offline tools to write recordings of their own (synthetic ones in tests, the replayed chunks of
``apt-replay --out``) with the same schemas the recorder writes, and to read JPEG frames back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from apt_policy.data.msgdefs import message_definition

__all__ = ["CdrTrimmer", "Messages", "decode_jpeg", "stamp_ns"]


class Messages:
    """Build and serialise messages of the given types (``pkg/msg/Type``), e.g.
    ``m.cdr("std_msgs/msg/String", data="hi")``; nested messages by ``m.new(type, **fields)``."""

    def __init__(self, type_names: Iterable[str]) -> None:
        from rosbags.typesys import Stores, get_types_from_msg, get_typestore

        self.store = get_typestore(Stores.EMPTY)
        types: dict[str, Any] = {}
        for name in type_names:
            types.update(get_types_from_msg(message_definition(name), name))
        self.store.register(types)

    def new(self, type_name: str, **fields: Any) -> Any:
        return self.store.types[type_name](**fields)

    def header(self, t_ns: int, frame_id: str = "") -> Any:
        return self.new(
            "std_msgs/msg/Header",
            stamp=self.new("builtin_interfaces/msg/Time", sec=int(t_ns // 10**9), nanosec=int(t_ns % 10**9)),
            frame_id=frame_id,
        )

    def cdr(self, type_name: str, **fields: Any) -> bytes:
        return bytes(self.store.serialize_cdr(self.new(type_name, **fields), type_name))

    def decode(self, raw: bytes, type_name: str) -> Any:
        return self.store.deserialize_cdr(raw, type_name)


class CdrTrimmer:
    """Cut serialised messages to their CDR length.

    The ROS 2 Kilted wheels' rmw serialises some types with unused bytes after the message (a 5-point
    JointTrajectory: 900 bytes, ~40 of them past the end; ``rclpy.serialization.serialize_message`` does the
    same). rclpy and Fast DDS ignore them; rosbags' reader refuses a message longer than its CDR plus 3 bytes
    of padding. The recorder passes every message through :meth:`trim`: the first message of each type is
    measured, and only types found padded are decoded (to find their end) from then on.
    """

    def __init__(self) -> None:
        self._messages: dict[str, Messages] = {}
        self._padded: dict[str, bool] = {}

    def _end(self, type_name: str, raw: bytes) -> int:
        m = self._messages.get(type_name)
        if m is None:
            m = self._messages[type_name] = Messages([type_name])
        msgdef = m.store.get_msgdef(type_name)
        func = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
        _, pos = func(memoryview(raw)[4:], 0, msgdef.cls, m.store)
        return 4 + int(pos)

    def trim(self, type_name: str, raw: bytes) -> bytes:
        padded = self._padded.get(type_name)
        if padded is False:
            return raw
        try:
            end = self._end(type_name, raw)
        except Exception:  # a type rosbags cannot parse: store as received
            self._padded[type_name] = False
            return raw
        if padded is None:
            self._padded[type_name] = end + 3 < len(raw)
        return raw[:end] if end + 3 < len(raw) else raw


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> ns."""
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


def decode_jpeg(data: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage data (JPEG / PNG) -> (H, W, 3) uint8 RGB."""
    bgr = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("cannot decode the compressed image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
