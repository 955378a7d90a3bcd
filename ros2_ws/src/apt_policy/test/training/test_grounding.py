"""Demo stage 0: grounding targets are right, and pretraining teaches the VLM where blocks are."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from apt_policy.core.preprocess import ImagePreprocessor, InstructionTokenizer
from apt_policy.model.backbone import Qwen3VLBackbone, Qwen3VLBackboneConfig
from apt_policy.model.backbone.layout import TEXT, sequence_layout
from apt_policy.robots.franka import FR3
from apt_policy.tasks.camera import make_camera
from apt_policy.tasks.render import render
from apt_policy.tasks.scene import COLORS, sample_scene
from apt_policy.training.grounding import (
    GroundingConfig,
    block_targets,
    colour_fractions,
    colour_masks,
    pretrain_grounding,
    random_caption,
)
from apt_policy.training.vocabulary import vocabulary, write_default_tokenizer


def test_colour_fractions_count_each_cell_exactly() -> None:
    img = np.full((1, 8, 12, 3), (200, 180, 150), np.uint8)  # table colour: no class
    img[0, 0:4, 0:4] = (200, 30, 30)  # red fills cell (0, 0)
    img[0, 4:6, 8:12] = (30, 160, 40)  # green fills half of cell (1, 2)
    img[0, 6:8, 4:5] = (30, 40, 200)  # blue: 2 of 16 pixels of cell (1, 1)
    f = colour_fractions(img, (2, 3)).reshape(2, 3, 3)
    expected = np.zeros((2, 3, 3), np.float32)
    expected[0, 0, 0], expected[1, 2, 1], expected[1, 1, 2] = 1.0, 0.5, 2 / 16
    np.testing.assert_allclose(f, expected)


def test_colour_fractions_in_chunks_match_one_pass() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 8, 12, 3), dtype=np.uint8)
    imgs[:, :4, :6] = (200, 30, 30)  # some red in every image, so the check is not on zeros alone
    whole = colour_fractions(imgs, (2, 3), chunk=len(imgs))
    assert whole[:, 0, 0].min() == 1.0
    for chunk in (1, 3, 5):  # 3 and 5 leave a short last chunk
        np.testing.assert_array_equal(colour_fractions(imgs, (2, 3), chunk=chunk), whole)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        colour_fractions(imgs, (2, 3), chunk=0)


def test_block_targets_point_at_the_rendered_block() -> None:
    h, w = 96, 128
    scene = sample_scene(3)
    img = render(scene, FR3.ready_pose, make_camera("front", w, h))
    masks = colour_masks(img)
    for k, color in enumerate(("red", "green", "blue")):
        t = block_targets(scene, color, "front", (h, w))
        assert np.all(np.abs(t) <= 1.2)
        u, v = (t[0] + 1) / 2 * (w - 1), (t[1] + 1) / 2 * (h - 1)
        ys, xs = np.nonzero(masks[..., k])
        assert len(xs) > 20, color  # the block is visible and classified as its colour
        assert np.hypot(xs.mean() - u, ys.mean() - v) < 4.0, color


def test_random_captions_name_one_colour_and_no_template() -> None:
    rng = np.random.default_rng(0)
    words = set(vocabulary())
    for _ in range(200):
        caption, at = random_caption("green", rng, 8)
        tokens = caption.split()
        assert 1 <= len(tokens) <= 8 and tokens[at] == "green"
        assert [t for t in tokens if t in COLORS] == ["green"]
        assert set(tokens) <= words


@pytest.mark.slow
def test_pretraining_makes_the_text_tokens_locate_the_named_block(tmp_path) -> None:
    """A linear probe on the caption's last token finds the named block better after stage 0."""
    tiny = Qwen3VLBackboneConfig.tiny()
    cfg = tiny.replace(
        vision=dataclasses.replace(tiny.vision, depth=1, deepstack_visual_indexes=(0,)),
        image_size=(32, 48),
        max_text_tokens=4,
    )
    torch.manual_seed(0)
    backbone = Qwen3VLBackbone(cfg)
    scenes = [sample_scene(i) for i in range(24)]
    cam = make_camera("front", 48, 32)
    images = np.stack([render(s, FR3.ready_pose, cam) for s in scenes])
    pre = ImagePreprocessor(("front",), (32, 48), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    tok = InstructionTokenizer(write_default_tokenizer(tmp_path / "tok.json"), 4)
    text_at = torch.from_numpy(np.flatnonzero(sequence_layout(cfg).kind == TEXT))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    def probe_error() -> float:
        feats, targets = [], []
        with torch.no_grad():
            for scene, img in zip(scenes, images, strict=True):
                for color in ("red", "green", "blue"):
                    ids, mask = tok(color)
                    out = backbone(
                        torch.from_numpy(pre.batch({"front": img})),
                        torch.from_numpy(np.array(ids)),
                        torch.from_numpy(np.array(mask)),
                    )
                    feats.append(out.hidden_states[-1][0, text_at[0]].numpy())
                    targets.append(block_targets(scene, color, "front", (32, 48))[:2])
        x, y = np.array(feats, np.float64), np.array(targets, np.float64)
        x = np.c_[x, np.ones(len(x))]
        w = np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ y)
        return float(np.abs(x @ w - y).mean())

    error_before = probe_error()
    losses = pretrain_grounding(
        backbone,
        images,
        scenes,
        camera_name="front",
        layer_map=(cfg.num_layers - 1,),
        preprocessor=pre,
        tokenizer=tok,
        config=GroundingConfig(steps=150, batch_size=16, lr=3e-3),
        progress=False,
    )
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert probe_error() < 0.5 * error_before
    assert not any(p.requires_grad for p in backbone.parameters())  # frozen again for Stage 1/2
    assert any(not torch.equal(before[k], v) for k, v in backbone.state_dict().items())
