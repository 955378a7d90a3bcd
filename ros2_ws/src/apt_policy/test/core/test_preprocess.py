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
