"""In-process RealSense colour capture with pyrealsense2, as an alternative to realsense-ros topics.

Each camera is opened at the sensor level (the colour sensor of the device with the configured serial,
stream ``rgb8`` at the configured ``WIDTHxHEIGHTxFPS``); librealsense calls back on its own thread for every
frame, the pixels are copied out of the frame (so librealsense can recycle it at once) and handed to
``on_frame(camera_name, image_rgb, stamp_s)`` -- the policy node's ``on_camera_frame``. No ROS message,
no serialisation, no DDS hop.

Timestamps. ``stamp_s`` is the capture time on the host's system clock (seconds since the epoch, the clock
ROS uses for header stamps when ``use_sim_time`` is false), so it is comparable with joint-state stamps:

* ``global_time`` domain (default on D400/D405 with ``global_time_enabled``): librealsense already maps the
  device's hardware timestamp onto the host system clock (ms) -- used as is.
* ``system_time`` domain: the host time the frame arrived (ms) -- used as is (later than capture by the
  transfer time; librealsense falls back to it when frame metadata is missing).
* ``hardware_clock`` domain: the device's own clock (ms, arbitrary origin, wraps). Mapped with an offset
  estimated as the minimum of (host arrival time - device time) over a sliding window of frames: the
  least-delayed frame bounds the offset, so stamps are late by at most the minimum transfer delay (a few ms)
  and drift is followed as the window slides. A backwards jump of the device clock (wrap, device reset)
  restarts the estimate.

pyrealsense2 is imported lazily (it needs libusb: the ``libusb-package`` wheel is loaded first when present).
"""

from __future__ import annotations

import ctypes
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FrameCallback = Callable[[str, np.ndarray, float], None]


class CameraNotFoundError(RuntimeError):
    """A configured serial number is not among the connected RealSense devices."""


@dataclass(frozen=True)
class ColorProfile:
    """Colour stream size and rate."""

    width: int = 640
    height: int = 480
    fps: int = 30

    @classmethod
    def parse(cls, text: str) -> ColorProfile:
        """Parse ``"640x480x30"`` (realsense-ros ``rgb_camera.color_profile`` syntax; ``,`` works too)."""
        m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*[x,]\s*(\d+)\s*", text)
        if m is None:
            raise ValueError(f"RealSense profile must look like 640x480x30 (WIDTHxHEIGHTxFPS), got {text!r}")
        profile = cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if min(profile.width, profile.height, profile.fps) <= 0:
            raise ValueError(f"RealSense profile values must be positive, got {text!r}")
        return profile

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.fps}"


def import_pyrealsense2() -> Any:
    """Import pyrealsense2, loading libusb from the ``libusb-package`` wheel first when it is installed."""
    try:
        import libusb_package

        path = libusb_package.get_library_path()
        if path is not None:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except (ImportError, OSError):
        pass  # a system libusb-1.0 may still be found by the loader
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        raise ImportError(
            f"in-process RealSense capture needs pyrealsense2 and libusb-1.0 ({exc}); "
            "install pyrealsense2 (and libusb-package or system libusb-1.0-0), or use realsense-ros topics"
        ) from exc
    return rs


class StampMapper:
    """Maps device frame timestamps (ms, in a librealsense timestamp domain) to host system time (s)."""

    def __init__(self, window: int = 300, wrap_tolerance_ms: float = 1000.0) -> None:
        if window < 1:
            raise ValueError("StampMapper window must be >= 1")
        self._offsets: deque[float] = deque(maxlen=window)
        self._last_device_ms: float | None = None
        self._wrap_tolerance_ms = wrap_tolerance_ms
        self.resets = 0

    def to_host(self, device_ms: float, domain: str, host_now_s: float) -> float:
        """Host-clock capture time (s) of a frame with timestamp ``device_ms`` that arrived at ``host_now_s``.

        ``domain`` is the name of the frame's ``rs.timestamp_domain``: ``global_time``, ``system_time`` or
        ``hardware_clock``.
        """
        if not math.isfinite(device_ms):
            return host_now_s
        if domain in ("global_time", "system_time"):
            return device_ms / 1000.0
        if domain != "hardware_clock":
            raise ValueError(f"unknown RealSense timestamp domain {domain!r}")
        if self._last_device_ms is not None and device_ms < self._last_device_ms - self._wrap_tolerance_ms:
            self._offsets.clear()
            self.resets += 1
        self._last_device_ms = device_ms
        self._offsets.append(host_now_s - device_ms / 1000.0)
        return device_ms / 1000.0 + min(self._offsets)


def connected_devices(rs: Any = None) -> list[Any]:
    """The RealSense devices librealsense sees now."""
    rs = rs or import_pyrealsense2()
    return list(rs.context().query_devices())


def _serial(rs: Any, device: Any) -> str:
    try:
        return str(device.get_info(rs.camera_info.serial_number))
    except RuntimeError:
        return "?"


def _describe(rs: Any, device: Any) -> str:
    try:
        name = device.get_info(rs.camera_info.name)
    except RuntimeError:
        name = "unknown model"
    return f"{_serial(rs, device)} ({name})"


def find_device(serial: str, devices: Sequence[Any], rs: Any = None) -> Any:
    """The device with ``serial``; otherwise :class:`CameraNotFoundError` listing the connected ones."""
    rs = rs or import_pyrealsense2()
    for device in devices:
        if _serial(rs, device) == str(serial):
            return device
    connected = ", ".join(_describe(rs, d) for d in devices) or "none"
    raise CameraNotFoundError(f"RealSense serial {serial!r} is not connected; connected: {connected}")


def _color_profile(rs: Any, device: Any, profile: ColorProfile) -> tuple[Any, Any]:
    """The (sensor, stream profile) giving colour ``rgb8`` at ``profile``; clear error listing what exists."""
    offered = []
    for sensor in device.query_sensors():
        for p in sensor.get_stream_profiles():
            if p.stream_type() != rs.stream.color or not p.is_video_stream_profile():
                continue
            v = p.as_video_stream_profile()
            if p.format() == rs.format.rgb8:
                offered.append(f"{v.width()}x{v.height()}x{p.fps()}")
            if (
                p.format() == rs.format.rgb8
                and v.width() == profile.width
                and v.height() == profile.height
                and p.fps() == profile.fps
            ):
                return sensor, p
    raise ValueError(
        f"RealSense {_describe(rs, device)} has no rgb8 colour stream {profile}; "
        f"rgb8 profiles offered: {', '.join(sorted(set(offered))) or 'none'}"
    )


class RealSenseCamera:
    """One colour camera streaming frames to ``on_frame`` from librealsense's callback thread."""

    def __init__(
        self,
        name: str,
        device: Any,
        profile: ColorProfile,
        on_frame: FrameCallback,
        log_error: Callable[[str], None] | None = None,
        host_clock: Callable[[], float] = time.time,
        rs: Any = None,
    ) -> None:
        self.rs = rs or import_pyrealsense2()
        self.name = name
        self.serial = _serial(self.rs, device)
        self.profile = profile
        self._on_frame = on_frame
        self._log_error = log_error or (lambda msg: None)
        self._host_clock = host_clock
        self._sensor, self._stream = _color_profile(self.rs, device, profile)
        self._mapper = StampMapper()
        self._lock = threading.Lock()
        self._last_frame_number: int | None = None
        self._running = False
        self.frames = 0
        self.dropped = 0  # gaps in the device frame counter
        self.errors = 0
        self.last_stamp_s = math.nan
        if self._sensor.supports(self.rs.option.global_time_enabled):
            try:
                self._sensor.set_option(self.rs.option.global_time_enabled, 1.0)
            except RuntimeError as exc:  # read-only on some firmware; hardware/system time is mapped anyway
                self._log_error(f"camera {name}: cannot enable global time ({exc})")

    def start(self) -> None:
        """Open the colour sensor and start streaming."""
        self._sensor.open(self._stream)
        self._sensor.start(self._callback)
        self._running = True

    def stop(self) -> None:
        """Stop streaming and close the sensor (idempotent)."""
        if not self._running:
            return
        self._running = False
        for step in (self._sensor.stop, self._sensor.close):
            try:
                step()
            except RuntimeError as exc:
                self._log_error(f"camera {self.name}: {exc}")

    def _callback(self, frame: Any) -> None:
        try:
            host_now = self._host_clock()
            video = frame.as_video_frame()
            image = np.array(np.asanyarray(video.get_data()), dtype=np.uint8, copy=True)
            if image.shape != (self.profile.height, self.profile.width, 3):
                raise ValueError(f"unexpected frame shape {image.shape}")
            domain = frame.get_frame_timestamp_domain().name
            stamp_s = self._mapper.to_host(frame.get_timestamp(), domain, host_now)
            number = int(frame.get_frame_number())
            with self._lock:
                if self._last_frame_number is not None and number > self._last_frame_number + 1:
                    self.dropped += number - self._last_frame_number - 1
                self._last_frame_number = number
                self.frames += 1
                self.last_stamp_s = stamp_s
            self._on_frame(self.name, image, stamp_s)
        except Exception as exc:  # never let an exception escape into librealsense's thread
            self.errors += 1
            self._log_error(f"camera {self.name}: frame dropped: {exc}")


def open_cameras(
    serials: Mapping[str, str],
    profile: ColorProfile,
    on_frame: FrameCallback,
    devices: Iterable[Any] | None = None,
    log_error: Callable[[str], None] | None = None,
    host_clock: Callable[[], float] = time.time,
) -> list[RealSenseCamera]:
    """Open and start one :class:`RealSenseCamera` per ``camera name -> serial``.

    ``devices`` defaults to the connected devices; tests pass pyrealsense2 software devices. Every serial is
    checked before any camera starts; on error the ones already started are stopped again.
    """
    rs = import_pyrealsense2()
    found = list(devices) if devices is not None else connected_devices(rs)
    if len(set(serials.values())) != len(serials):
        raise ValueError(f"RealSense serials must be distinct, got {dict(serials)}")
    chosen = {name: find_device(serial, found, rs) for name, serial in serials.items()}
    cameras: list[RealSenseCamera] = []
    try:
        for name, device in chosen.items():
            camera = RealSenseCamera(name, device, profile, on_frame, log_error, host_clock, rs)
            camera.start()
            cameras.append(camera)
    except Exception:
        for camera in cameras:
            camera.stop()
        raise
    return cameras


class SoftwareColorDevice:
    """A pyrealsense2 software device with one ``rgb8`` colour stream: synthetic frames through the real
    librealsense frame path, for tests and dry runs without a camera.

    ``device`` is the ``rs.software_device`` to pass in ``open_cameras(devices=[...])``;
    :meth:`push` injects one frame with a timestamp (ms) in the given domain.
    """

    def __init__(self, serial: str, profile: ColorProfile, name: str = "Software RGB camera") -> None:
        rs = import_pyrealsense2()
        self.rs = rs
        self.profile = profile
        self.device = rs.software_device()
        self.device.register_info(rs.camera_info.serial_number, str(serial))
        self.device.register_info(rs.camera_info.name, name)
        self._sensor = self.device.add_sensor("RGB Camera")
        stream = rs.video_stream()
        stream.type = rs.stream.color
        stream.index = 0
        stream.uid = 0
        stream.width, stream.height, stream.fps = profile.width, profile.height, profile.fps
        stream.bpp = 3
        stream.fmt = rs.format.rgb8
        intrinsics = rs.intrinsics()
        intrinsics.width, intrinsics.height = profile.width, profile.height
        intrinsics.fx = intrinsics.fy = float(profile.width)
        intrinsics.ppx, intrinsics.ppy = profile.width / 2.0, profile.height / 2.0
        stream.intrinsics = intrinsics
        self._stream = self._sensor.add_video_stream(stream).as_video_stream_profile()
        self._frame_number = 0

    def push(self, image_rgb: np.ndarray, timestamp_ms: float, domain: str = "global_time") -> None:
        """Inject one (H, W, 3) uint8 frame stamped ``timestamp_ms`` in ``domain`` (rs.timestamp_domain)."""
        expected = (self.profile.height, self.profile.width, 3)
        if image_rgb.shape != expected or image_rgb.dtype != np.uint8:
            raise ValueError(
                f"software frame must be uint8 {expected}, got {image_rgb.dtype} {image_rgb.shape}"
            )
        frame = self.rs.software_video_frame()
        frame.pixels = np.ascontiguousarray(image_rgb)
        frame.stride = self.profile.width * 3
        frame.bpp = 3
        frame.timestamp = float(timestamp_ms)
        frame.domain = getattr(self.rs.timestamp_domain, domain)
        frame.frame_number = self._frame_number
        frame.profile = self._stream
        self._frame_number += 1
        self._sensor.on_video_frame(frame)
