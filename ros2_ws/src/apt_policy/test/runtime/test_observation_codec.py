"""Camera frames for remote inference: raw frames at model size are exactly the encoder's input, JPEG is
close, and every malformed payload is refused with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.core.preprocess import resize_rgb
from apt_policy.runtime.observation_codec import ImageCodecError, decode_images, encode_images

SIZE = (96, 128)


def _frame(seed: int = 0, shape: tuple[int, int] = (480, 640)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.random((shape[0] // 80, shape[1] // 80, 3))  # JPEG-friendly: flat patches
    return (np.kron(smooth, np.ones((80, 80, 1))) * 255).astype(np.uint8)


def _decode(enc, cameras=("front",), size=SIZE):
    return decode_images(enc.encoding, enc.height, enc.width, enc.names, enc.sizes, enc.data, cameras, size)


def test_raw_frames_are_the_encoders_resize_exactly() -> None:
    frames = {"front": _frame(0), "wrist": _frame(1)}
    enc = encode_images(frames, ("front", "wrist"), SIZE, "rgb8")
    assert enc.nbytes == 2 * SIZE[0] * SIZE[1] * 3
    out = _decode(enc, ("front", "wrist"))
    for name, frame in frames.items():
        assert np.array_equal(out[name], resize_rgb(frame, SIZE))


def test_jpeg_is_smaller_and_close() -> None:
    frames = {"front": _frame(2)}
    raw = encode_images(frames, ("front",), SIZE, "rgb8")
    jpeg = encode_images(frames, ("front",), SIZE, "jpeg", jpeg_quality=90)
    assert jpeg.nbytes < raw.nbytes / 3
    error = np.abs(_decode(jpeg)["front"].astype(int) - resize_rgb(frames["front"], SIZE).astype(int))
    assert error.mean() < 8  # chroma subsampling at patch edges; swapped channels would be ~80


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (dict(encoding="png"), "unknown image encoding"),
        (dict(height=48), "the model takes"),
        (dict(sizes=(10,)), "do not add up"),
        (dict(names=("wrist",)), "no image for camera"),
        (dict(names=("front", "front"), sizes=(18432, 18432)), "duplicated"),
        (dict(data=b"\0" * 36864, sizes=(36864,), encoding="jpeg"), "not a decodable JPEG"),
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(change: dict, reason: str) -> None:
    enc = encode_images({"front": _frame(3)}, ("front",), SIZE, "rgb8")
    fields = dict(
        encoding=enc.encoding,
        height=enc.height,
        width=enc.width,
        names=enc.names,
        sizes=enc.sizes,
        data=enc.data,
    )
    fields.update(change)
    with pytest.raises(ImageCodecError, match=reason):
        decode_images(**fields, cameras=("front",), size=SIZE)


def test_a_jpeg_of_the_wrong_size_is_refused() -> None:
    small = encode_images({"front": _frame(4)}, ("front",), (48, 64), "jpeg")
    with pytest.raises(ImageCodecError, match="JPEG is 48x64"):
        decode_images("jpeg", 96, 128, small.names, small.sizes, small.data, ("front",), SIZE)
