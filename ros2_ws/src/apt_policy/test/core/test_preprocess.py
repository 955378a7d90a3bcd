"""Image preprocessing and instruction tokenisation (torch-free)."""

from __future__ import annotations

import numpy as np
import pytest
from apt_policy.core.preprocess import (
    ImagePreprocessor,
    InstructionTokenizer,
    PreprocessError,
    build_word_tokenizer,
)


def test_images_resized_normalised_in_camera_order():
    pre = ImagePreprocessor(["front", "wrist"], (16, 24), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    front = np.zeros((48, 64, 3), np.uint8)
    front[..., 0] = 255  # pure red
    wrist = np.full((8, 8, 3), 51, np.uint8)  # enlarged
    out = pre({"wrist": wrist, "front": front})  # order of the mapping must not matter
    assert out.shape == (1, 2, 3, 16, 24) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 0, 1:], -1.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 1], 51 / 255 * 2 - 1, atol=1e-6)
    first = out.copy()
    again = pre({"wrist": wrist, "front": front})
    assert again is out  # steady path reuses its buffer
    np.testing.assert_array_equal(again, first)


def test_resize_matches_opencv_area():
    import cv2

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    pre = ImagePreprocessor(["c"], (30, 40), mean=(0, 0, 0), std=(1, 1, 1))
    ref = cv2.resize(img, (40, 30), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    np.testing.assert_allclose(pre.batch({"c": img})[0, 0], ref.transpose(2, 0, 1), atol=1e-6)


@pytest.mark.parametrize(
    ("images", "needle"),
    [
        ({"front": np.zeros((4, 4, 3), np.uint8), "side": np.zeros((4, 4, 3), np.uint8)}, "unknown camera"),
        ({}, "missing camera"),
        ({"front": np.zeros((4, 4, 3), np.float32)}, "dtype uint8"),
        ({"front": np.zeros((4, 4), np.uint8)}, r"shape \(H, W, 3\)"),
        ({"front": np.zeros((4, 4, 4), np.uint8)}, r"shape \(H, W, 3\)"),
        ({"front": [[0]]}, "numpy array"),
    ],
)
def test_bad_images_rejected_clearly(images, needle):
    with pytest.raises(PreprocessError, match=needle):
        ImagePreprocessor(["front"], (8, 8))(images)


def test_tokenizer_pads_truncates_and_caches(tmp_path):
    path = tmp_path / "tokenizer.json"
    build_word_tokenizer(["reach the red block", "touch the blue cube"], path)
    tok = InstructionTokenizer(path, max_tokens=3)
    ids, mask = tok("Reach  the RED")
    assert ids.shape == (1, 3) and ids.dtype == np.int64 and mask.dtype == np.int64
    assert mask.tolist() == [[1, 1, 1]] and 0 not in ids and 1 not in ids  # no pad, no unk
    ids2, mask2 = tok("reach")
    assert mask2.tolist() == [[1, 0, 0]] and ids2[0, 1] == 0 and ids2[0, 0] == ids[0, 0]
    long_ids, _ = tok("reach the red block now")  # truncated to the first 3 tokens
    np.testing.assert_array_equal(long_ids, ids)
    assert tok("reach") is tok("reach")  # cached
    unk, _ = tok("grasp")
    assert unk[0, 0] == 1
    _, empty_mask = tok("   ")
    assert empty_mask.sum() == 0
    with pytest.raises(PreprocessError, match="must be a str"):
        tok(None)  # type: ignore[arg-type]
    with pytest.raises(PreprocessError, match="not found"):
        InstructionTokenizer(tmp_path / "none.json", 4)


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A rendered-looking frame: smooth gradients with flat blocks (hard edges) on top."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w) + 60], axis=-1)
    for _ in range(6):
        top, left = rng.integers(0, h - 60), rng.integers(0, w - 60)
        img[top : top + rng.integers(20, 60), left : left + rng.integers(20, 60)] = rng.integers(0, 256, 3)
    return img.astype(np.uint8)


@pytest.mark.parametrize("n_cams", [1, 2, 3])
@pytest.mark.parametrize("size", [(224, 224), (96, 128), (480, 640)])
def test_images_equal_the_reference_for_n_cameras_and_reuse_buffers(n_cams, size):
    from apt_policy.core.preprocess import resize_rgb

    names = [f"cam{i}" for i in range(n_cams)]
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    pre = ImagePreprocessor(names, size, mean=mean, std=std)
    images = {n: _scene(480, 640, i) for i, n in enumerate(names)}
    out = pre(images)
    buffers = (out, pre._resized, *pre._planes)
    for i, n in enumerate(names):
        ref = resize_rgb(images[n], size).astype(np.float64) / 255
        ref = ((ref - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
        np.testing.assert_allclose(out[0, i], ref, atol=2e-6)
    first = out.copy()
    again = pre({n: images[n][:, ::-1][:, ::-1] for n in names})
    now = (again, pre._resized, *pre._planes)
    assert again is out and all(a is b for a, b in zip(now, buffers, strict=True))
    np.testing.assert_array_equal(again, first)
    exact = {n: resize_rgb(images[n], size) for n in names}  # frames at the model size: no resize
    wide = {n: np.zeros((size[0], size[1] + 3, 3), np.uint8) for n in names}
    for n in names:
        wide[n][:, : size[1]] = exact[n]
    strided = {n: wide[n][:, : size[1]] for n in names}
    assert not strided[names[0]].flags.c_contiguous
    np.testing.assert_array_equal(pre.batch(strided), pre.batch(exact))
    np.testing.assert_array_equal(pre.batch(exact), first)


def test_integer_shrink_and_enlarging_are_plain_opencv():
    import cv2
    from apt_policy.core.preprocess import resize_rgb

    img = _scene(480, 640)
    for (h, w), interp in (
        ((96, 128), cv2.INTER_AREA),
        ((240, 320), cv2.INTER_AREA),
        ((600, 800), cv2.INTER_LINEAR),
    ):
        np.testing.assert_array_equal(resize_rgb(img, (h, w)), cv2.resize(img, (w, h), interpolation=interp))
    small = _scene(100, 120)
    np.testing.assert_array_equal(  # one axis shrinks, the other grows: one INTER_AREA pass, as before
        resize_rgb(small, (80, 160)), cv2.resize(small, (160, 80), interpolation=cv2.INTER_AREA)
    )


def test_two_stage_shrink_stays_within_tolerance_of_one_pass_area():
    """640x480 -> 224x224 (non-integer factors): area by 2, then linear; tolerance in normalised units."""
    import cv2
    from apt_policy.core.preprocess import _area_stages, resize_rgb

    assert _area_stages((480, 640), (224, 224)) == (240, 320)
    assert _area_stages((480, 640), (96, 128)) is None and _area_stages((300, 400), (224, 224)) is None
    for seed in range(4):
        img = _scene(480, 640, seed)
        ours = resize_rgb(img, (224, 224)).astype(np.float64)
        ref = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float64)
        diff = np.abs(ours - ref) / 127.5  # std 0.5: one level = 1/127.5
        assert diff.mean() <= 0.005 and np.quantile(diff, 0.99) <= 0.1, (diff.mean(), np.quantile(diff, 0.99))
