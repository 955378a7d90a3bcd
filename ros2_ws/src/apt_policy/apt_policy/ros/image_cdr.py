"""sensor_msgs/Image read in place from its serialised (CDR) form, without rclpy's message conversion.

Why: rclpy turns a received 640x480 rgb8 Image into a Python message in one C call of ~0.6 ms that holds
the GIL (``uint8[] data`` becomes an ``array.array``); the command stream thread then cannot publish on
time. A raw subscription hands over the serialised bytes instead (one ~0.03 ms copy), and this module reads
the few fields in front of the pixels and returns the pixels as a view on those bytes.

Format: the 4-byte encapsulation header, then the fields in order, each aligned to its size relative to
the end of that header (XCDR1 plain CDR, what ROS 2 middlewares exchange): ``header`` (int32 sec, uint32
nanosec, string frame_id), uint32 height, uint32 width, string encoding, uint8 is_bigendian, uint32 step,
sequence<uint8> data. Strings are a uint32 length that counts a terminating NUL, then the bytes.
Anything else (another encapsulation, a truncated buffer) raises :class:`CdrError`; the caller can fall back
to ``rclpy.serialization.deserialize_message``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# encapsulation id -> (uint32, int32) readers: CDR_BE, CDR_LE
_BYTE_ORDER = {
    b"\x00\x00": (struct.Struct(">I"), struct.Struct(">i")),
    b"\x00\x01": (struct.Struct("<I"), struct.Struct("<i")),
}
_HEADER = 4  # encapsulation bytes; alignment counts from here


class CdrError(ValueError):
    """Bytes that are not a serialised sensor_msgs/Image this reader understands (says why)."""


@dataclass(frozen=True)
class ImageView:
    """The fields of a sensor_msgs/Image; ``data`` is a view on the serialised bytes (no copy)."""

    stamp_s: float
    frame_id: str
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


class _Reader:
    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = memoryview(buf).cast("B")
        if len(self.buf) < _HEADER:
            raise CdrError(f"{len(self.buf)} bytes: too short for a serialised message")
        readers = _BYTE_ORDER.get(bytes(self.buf[:2]))
        if readers is None:
            raise CdrError(f"unsupported CDR encapsulation 0x{bytes(self.buf[:2]).hex()}")
        self.u32, self.i32 = readers
        self.pos = _HEADER

    def _take(self, size: int, align: int, what: str) -> int:
        start = self.pos + (-(self.pos - _HEADER)) % align
        if start + size > len(self.buf):
            raise CdrError(
                f"truncated message: {what} needs bytes {start}..{start + size}, have {len(self.buf)}"
            )
        self.pos = start + size
        return start

    def uint32(self, what: str) -> int:
        return self.u32.unpack_from(self.buf, self._take(4, 4, what))[0]

    def int32(self, what: str) -> int:
        return self.i32.unpack_from(self.buf, self._take(4, 4, what))[0]

    def uint8(self, what: str) -> int:
        return self.buf[self._take(1, 1, what)]

    def octets(self, what: str) -> memoryview:
        size = self.uint32(what + " length")
        start = self._take(size, 1, what)
        return self.buf[start : start + size]

    def string(self, what: str) -> str:
        raw = self.octets(what)
        if len(raw) == 0 or raw[-1] != 0:
            raise CdrError(f"{what}: string without its terminating NUL")
        try:
            return bytes(raw[:-1]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CdrError(f"{what}: not UTF-8 ({exc})") from None


def parse_image(buf: bytes | memoryview) -> ImageView:
    """Read a serialised sensor_msgs/Image; the pixels stay in ``buf`` (keep it alive with the view)."""
    r = _Reader(buf)
    sec = r.int32("header.stamp.sec")
    nanosec = r.uint32("header.stamp.nanosec")
    frame_id = r.string("header.frame_id")
    height = r.uint32("height")
    width = r.uint32("width")
    encoding = r.string("encoding")
    is_bigendian = r.uint8("is_bigendian")
    step = r.uint32("step")
    data = r.octets("data")
    return ImageView(sec + 1e-9 * nanosec, frame_id, height, width, encoding, is_bigendian, step, data)
