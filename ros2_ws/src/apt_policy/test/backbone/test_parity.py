"""Our fixed-shape Qwen3-VL equals transformers' Qwen3VLModel layer by layer (fp32, max abs <= 1e-5)."""

from __future__ import annotations

import pytest
import torch
from apt_policy.model.backbone import Qwen3VLBackboneConfig, TextConfig, VisionConfig, load_qwen3vl_checkpoint
from hf_reference import hf_forward, normalise, random_hf_model, random_inputs, save_hf_model

TOL = 1e-5
torch.set_num_threads(2)

NO_DEEPSTACK = VisionConfig(
    **{**Qwen3VLBackboneConfig.tiny().vision.__dict__, "deepstack_visual_indexes": ()}
)


def _compare(
    tmp_path, arch: Qwen3VLBackboneConfig, num_layers: int | None, batch: int = 2, hidden_size=64, **deploy
):
    hf_model = random_hf_model(arch)
    ckpt = save_hf_model(hf_model, tmp_path / "ckpt")
    ours = load_qwen3vl_checkpoint(
        ckpt,
        num_layers=num_layers,
        num_cameras=arch.num_cameras,
        image_size=arch.image_size,
        max_text_tokens=arch.max_text_tokens,
        **deploy,
    )
    images, ids, mask = random_inputs(ours.config, batch)
    with torch.no_grad():
        out = ours(normalise(images), ids, mask)
    reference = hf_forward(hf_model, ours.config, images, ids, mask)[: ours.config.num_layers]

    assert out.hidden_states.shape == (
        ours.config.num_layers,
        batch,
        ours.config.sequence_length,
        hidden_size,
    )
    valid = out.vision_mask | out.language_mask  # padded instruction positions are never compared
    assert valid.sum() < valid.numel() or batch == 1
    diff = (out.hidden_states - reference).abs()[:, valid]
    scale = reference[:, valid].abs().max().item()
    assert scale > 1.0, "activations too small for an absolute tolerance to mean anything"
    assert diff.max().item() <= TOL, f"max abs diff {diff.max().item():.3g} (activation scale {scale:.3g})"
    return out, reference


@pytest.mark.parametrize("num_cameras", [1, 2])
def test_matches_transformers_every_layer(tmp_path, num_cameras):
    _compare(tmp_path, Qwen3VLBackboneConfig.tiny(num_cameras=num_cameras), num_layers=None)


def test_matches_transformers_without_deepstack(tmp_path):
    _compare(tmp_path, Qwen3VLBackboneConfig.tiny(num_cameras=2, vision=NO_DEEPSTACK), num_layers=None)


def test_truncated_model_matches_first_layers(tmp_path):
    # 1 layer kept of 3, while the vision tower has 2 deepstack layers: only the first one is used.
    out, _ = _compare(tmp_path, Qwen3VLBackboneConfig.tiny(num_cameras=2), num_layers=1)
    assert out.hidden_states.shape[0] == 1


def test_non_square_images_match(tmp_path):
    _compare(
        tmp_path, Qwen3VLBackboneConfig.tiny(num_cameras=1, image_size=(32, 64)), num_layers=None, batch=1
    )


def test_deepstack_changes_the_result(tmp_path):
    """Disabling deepstack on a model trained with it is a different model: layers after the first differ."""
    arch = Qwen3VLBackboneConfig.tiny()
    hf_model = random_hf_model(arch)
    ckpt = save_hf_model(hf_model, tmp_path / "ckpt")
    with_ds = load_qwen3vl_checkpoint(ckpt, image_size=arch.image_size, max_text_tokens=arch.max_text_tokens)
    without = load_qwen3vl_checkpoint(
        ckpt, image_size=arch.image_size, max_text_tokens=arch.max_text_tokens, use_deepstack=False
    )
    images, ids, mask = random_inputs(arch, 1)
    with torch.no_grad():
        a = with_ds(normalise(images), ids, mask).hidden_states
        b = without(normalise(images), ids, mask).hidden_states
    assert torch.equal(a[0], b[0])  # injection happens after layer 0's output
    assert (a[1] - b[1]).abs().max() > 1e-2


def test_matches_transformers_at_qwen3vl_geometry(tmp_path):
    """Qwen3-VL-2B's per-head geometry at 224x224: patch 16, 48x48 learned positions resampled to 14x14,
    vision head dim 64, text head dim 128 with mrope_section (24, 20, 20), GQA 2:1, rope theta 5e6."""
    arch = Qwen3VLBackboneConfig(
        vision=VisionConfig(
            depth=2,
            hidden_size=128,
            intermediate_size=256,
            num_heads=2,
            out_hidden_size=256,
            num_position_embeddings=2304,
            deepstack_visual_indexes=(0, 1),
        ),
        text=TextConfig(
            vocab_size=1024,
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=128,
        ),
        image_token_id=1000,
        vision_start_token_id=1001,
        vision_end_token_id=1002,
        num_cameras=2,
        image_size=(224, 224),
        max_text_tokens=8,
    )
    out, _ = _compare(tmp_path, arch, num_layers=None, hidden_size=256)
    assert out.hidden_states.shape[2] == 2 * (49 + 2) + 8


def test_reference_cli_passes_on_a_checkpoint_and_flags_a_different_model(tmp_path, capsys):
    """`python -m apt_policy.model.backbone.reference` is the check to run on real weights."""
    from apt_policy.model.backbone.reference import compare, main

    arch = Qwen3VLBackboneConfig.tiny(num_cameras=2)
    ckpt = save_hf_model(random_hf_model(arch, seed=1), tmp_path / "ckpt")
    argv = [str(ckpt), "--num-cameras", "2", "--image-size", "64", "64", "--max-text-tokens", "8"]
    assert main([*argv, "--tolerance", "1e-5"]) == 0
    assert "OK: worst max abs diff 0" in capsys.readouterr().out

    other = load_qwen3vl_checkpoint(
        save_hf_model(random_hf_model(arch, seed=2), tmp_path / "other"),
        num_cameras=2,
        image_size=arch.image_size,
        max_text_tokens=arch.max_text_tokens,
    )
    images, ids, mask = random_inputs(other.config, batch=1)
    diffs = compare(other, random_hf_model(arch, seed=1), images, ids, mask)
    assert all(d.max_abs_diff > 1e-1 for d in diffs)
