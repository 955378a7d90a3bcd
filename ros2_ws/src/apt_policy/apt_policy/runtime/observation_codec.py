"""Camera images for remote inference: resized to the model's input on the robot, sent raw or as JPEG.

The robot resizes every frame with the same ``resize_rgb`` the encoder uses (so a raw frame at model size is
exactly the model's input) and sends either the raw RGB bytes (``rgb8``: height x width x 3) or a JPEG
(``jpeg``: a fraction of the bytes, lossy). :func:`decode_images` checks everything it is given and raises
:class:`ImageCodecError` with the reason for anything malformed: a server never feeds a bad frame to a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..core.preprocess import resize_rgb

ENCODINGS = ("rgb8", "jpeg")
MAX_IMAGE_BYTES = 64 << 20  # no sane model input is larger


class ImageCodecError(ValueError):
    """Images that cannot be decoded or do not fit the request (the message says why)."""


@dataclass(frozen=True)
class EncodedImages:
    """Images of one observation ready for the wire: one encoding, one size, concatenated bytes."""

    encoding: str
    height: int
    width: int
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)


def encode_images(
    images: Mapping[str, np.ndarray],
    cameras: Sequence[str],
    size: tuple[int, int],
    encoding: str = "jpeg",
    jpeg_quality: int = 90,
) -> EncodedImages:
    """``images[camera]`` (H, W, 3) uint8 RGB for each of ``cameras``, resized to ``size`` (height, width)
    and encoded; KeyError for a missing camera, ValueError for an unknown encoding or a bad frame."""
    if encoding not in ENCODINGS:
        raise ValueError(f"image encoding must be one of {ENCODINGS}, got {encoding!r}")
    h, w = int(size[0]), int(size[1])
    parts: list[bytes] = []
    for camera in cameras:
        img = np.asarray(images[camera])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"camera {camera!r}: expected (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
        small = img if img.shape[:2] == (h, w) else resize_rgb(img, (h, w))
        if encoding == "rgb8":
            parts.append(np.ascontiguousarray(small).tobytes())
        else:
            ok, buf = cv2.imencode(
                ".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
            )
            if not ok:
                raise ValueError(f"camera {camera!r}: JPEG encoding failed")
            parts.append(buf.tobytes())
    return EncodedImages(encoding, h, w, tuple(cameras), tuple(len(p) for p in parts), b"".join(parts))


def decode_images(
    encoding: str,
    height: int,
    width: int,
    names: Sequence[str],
    sizes: Sequence[int],
    data: bytes | bytearray | memoryview | np.ndarray,
    cameras: Sequence[str],
    size: tuple[int, int],
) -> dict[str, np.ndarray]:
    """The (height, width, 3) uint8 RGB image of every camera the model needs (``cameras``), checked against
    the model's input ``size``; :class:`ImageCodecError` with the reason for anything that does not fit."""
    if encoding not in ENCODINGS:
        raise ImageCodecError(f"unknown image encoding {encoding!r} (expected one of {ENCODINGS})")
    if (int(height), int(width)) != (int(size[0]), int(size[1])):
        raise ImageCodecError(f"images are {height}x{width}, the model takes {size[0]}x{size[1]}")
    if len(names) != len(sizes):
        raise ImageCodecError(f"{len(names)} camera names but {len(sizes)} image sizes")
    if len(set(names)) != len(names):
        raise ImageCodecError(f"duplicated camera names {list(names)}")
    missing = [c for c in cameras if c not in names]
    if missing:
        raise ImageCodecError(f"no image for camera(s) {missing} (got {list(names)})")
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    if any(int(s) < 0 for s in sizes) or sum(int(s) for s in sizes) != buf.size:
        raise ImageCodecError(f"image sizes {list(sizes)} do not add up to the {buf.size} bytes sent")
    if buf.size > MAX_IMAGE_BYTES:
        raise ImageCodecError(f"{buf.size} bytes of images is over the {MAX_IMAGE_BYTES} byte limit")
    offsets = np.concatenate([[0], np.cumsum(np.asarray(sizes, dtype=np.int64))])
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        if name not in cameras:
            continue
        part = buf[int(offsets[i]) : int(offsets[i + 1])]
        if encoding == "rgb8":
            if part.size != height * width * 3:
                raise ImageCodecError(
                    f"camera {name!r}: {part.size} bytes, rgb8 {height}x{width} needs {height * width * 3}"
                )
            out[name] = part.reshape(height, width, 3)
            continue
        bgr = cv2.imdecode(part, cv2.IMREAD_COLOR) if part.size else None
        if bgr is None:
            raise ImageCodecError(f"camera {name!r}: not a decodable JPEG ({part.size} bytes)")
        if bgr.shape[:2] != (height, width):
            raise ImageCodecError(
                f"camera {name!r}: JPEG is {bgr.shape[0]}x{bgr.shape[1]}, not {height}x{width}"
            )
        out[name] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return out
