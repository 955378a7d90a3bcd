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
    referring_targets,
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


@pytest.mark.parametrize("camera", ["front", "side"])
def test_block_targets_point_at_the_rendered_block(camera: str) -> None:
    h, w = 96, 128
    scene = sample_scene(3)
    img = render(scene, FR3.ready_pose, make_camera(camera, w, h))
    masks = colour_masks(img)
    for k, color in enumerate(("red", "green", "blue")):
        t = block_targets(scene, color, camera, (h, w))
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
@pytest.mark.parametrize("cameras", [("front",), ("front", "side")])
def test_pretraining_makes_the_text_tokens_locate_the_named_block(tmp_path, cameras) -> None:
    """A linear probe on the caption's last token finds the named block better after stage 0, in every
    camera's image (with two cameras, the side view's (u, v) too)."""
    tiny = Qwen3VLBackboneConfig.tiny()
    cfg = tiny.replace(
        vision=dataclasses.replace(tiny.vision, depth=1, deepstack_visual_indexes=(0,)),
        image_size=(32, 48),
        max_text_tokens=4,
        num_cameras=len(cameras),
    )
    torch.manual_seed(0)
    backbone = Qwen3VLBackbone(cfg)
    scenes = [sample_scene(i) for i in range(24)]
    images = {
        c: np.stack([render(s, FR3.ready_pose, make_camera(c, 48, 32)) for s in scenes]) for c in cameras
    }
    pre = ImagePreprocessor(cameras, (32, 48), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    tok = InstructionTokenizer(write_default_tokenizer(tmp_path / "tok.json"), 4)
    text_at = torch.from_numpy(np.flatnonzero(sequence_layout(cfg).kind == TEXT))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    def probe_errors() -> np.ndarray:
        """Mean absolute error of a ridge probe per camera's (u, v)."""
        feats, targets = [], []
        with torch.no_grad():
            for i, scene in enumerate(scenes):
                for color in ("red", "green", "blue"):
                    ids, mask = tok(color)
                    out = backbone(
                        torch.from_numpy(pre.batch({c: images[c][i] for c in cameras})),
                        torch.from_numpy(np.array(ids)),
                        torch.from_numpy(np.array(mask)),
                    )
                    feats.append(out.hidden_states[-1][0, text_at[0]].numpy())
                    targets.append(referring_targets(scene, color, cameras, (32, 48))[: 2 * len(cameras)])
        x, y = np.array(feats, np.float64), np.array(targets, np.float64)
        x = np.c_[x, np.ones(len(x))]
        w = np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ y)
        return np.abs(x @ w - y).mean(axis=0).reshape(len(cameras), 2).mean(axis=1)

    errors_before = probe_errors()
    losses = pretrain_grounding(
        backbone,
        images,
        scenes,
        layer_map=(cfg.num_layers - 1,),
        preprocessor=pre,
        tokenizer=tok,
        config=GroundingConfig(steps=150, batch_size=16, lr=3e-3),
        progress=False,
    )
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    errors_after = probe_errors()
    assert np.all(errors_after < 0.5 * errors_before), (errors_before, errors_after)
    assert not any(p.requires_grad for p in backbone.parameters())  # frozen again for Stage 1/2
    assert any(not torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_referring_targets_hold_each_cameras_view_then_the_table_position() -> None:
    scene = sample_scene(4)
    front = block_targets(scene, "blue", "front", (96, 128))
    side = block_targets(scene, "blue", "side", (96, 128))
    np.testing.assert_array_equal(referring_targets(scene, "blue", ("front",), (96, 128)), front)
    both = referring_targets(scene, "blue", ("front", "side"), (96, 128))
    np.testing.assert_array_equal(both, np.concatenate([front[:2], side[:2], front[2:]]))
    assert not np.allclose(front[:2], side[:2])  # two views: two different image positions


def test_pretraining_refuses_images_that_do_not_fit_the_backbone(tmp_path) -> None:
    tiny = Qwen3VLBackboneConfig.tiny()
    cfg = tiny.replace(image_size=(32, 48), max_text_tokens=4, num_cameras=2)
    backbone = Qwen3VLBackbone(cfg)
    tok = InstructionTokenizer(write_default_tokenizer(tmp_path / "tok.json"), 4)
    scenes = [sample_scene(0)]
    image = np.zeros((1, 32, 48, 3), np.uint8)
    common = {"layer_map": (0,), "tokenizer": tok, "config": GroundingConfig(steps=1), "progress": False}
    one = ImagePreprocessor(("front",), (32, 48), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="1 camera"):  # a two-camera backbone, one camera's images
        pretrain_grounding(backbone, {"front": image}, scenes, preprocessor=one, **common)
    two = ImagePreprocessor(("front", "side"), (32, 48), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="preprocessor takes"):  # cameras in another order
        pretrain_grounding(backbone, {"side": image, "front": image}, scenes, preprocessor=two, **common)
    with pytest.raises(ValueError, match="one frame per scene"):
        pretrain_grounding(backbone, {"front": image, "side": image}, scenes * 2, preprocessor=two, **common)
