"""Config round trips, the sequence layout against transformers' get_rope_index, and the causal guarantees."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from apt_policy.model.backbone import Qwen3VLBackbone, Qwen3VLBackboneConfig, sequence_layout
from apt_policy.model.backbone.layout import IMAGE, VISION_END, VISION_START
from hf_reference import hf_config, normalise, random_inputs
from transformers import Qwen3VLModel

torch.set_num_threads(2)


def test_config_round_trips_through_json():
    cfg = Qwen3VLBackboneConfig.tiny(num_cameras=3, image_size=(32, 64), num_layers=2, use_deepstack=False)
    again = Qwen3VLBackboneConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown Qwen3VLBackboneConfig fields"):
        Qwen3VLBackboneConfig.from_dict({**cfg.to_dict(), "num_camera": 2})


def test_from_hf_config_reads_transformers_config():
    tiny = Qwen3VLBackboneConfig.tiny()
    assert (
        Qwen3VLBackboneConfig.from_hf_config(
            hf_config(tiny).to_dict(), image_size=(64, 64), max_text_tokens=8
        )
        == tiny
    )


def test_from_hf_config_reads_legacy_rope_scaling_layout():
    """Checkpoints written by older transformers keep rope_theta / mrope_section under rope_scaling."""
    hf = hf_config(Qwen3VLBackboneConfig.tiny()).to_dict()
    text = hf["text_config"]
    rope = text.pop("rope_parameters")
    text["rope_theta"] = rope["rope_theta"]
    text["rope_scaling"] = {
        "rope_type": "default",
        "mrope_section": rope["mrope_section"],
        "mrope_interleaved": True,
    }
    cfg = Qwen3VLBackboneConfig.from_hf_config(hf, image_size=(64, 64), max_text_tokens=8)
    assert cfg.text.mrope_section == (4, 2, 2) and cfg.text.rope_theta == rope["rope_theta"]


def test_qwen3vl_2b_shapes():
    cfg = Qwen3VLBackboneConfig.qwen3vl_2b(num_cameras=2, max_text_tokens=32)
    assert cfg.hidden_size == 2048 and cfg.num_layers == 28
    assert cfg.patch_grid == (14, 14) and cfg.num_vision_tokens_per_camera == 49
    assert cfg.sequence_length == 2 * (49 + 2) + 32
    assert Qwen3VLBackboneConfig.qwen3vl_2b(num_layers=12).num_layers == 12


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_size": (64, 60)}, "multiples of patch_size"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"num_cameras": 0}, "num_cameras"),
        ({"image_token_id": 10_000}, "image_token_id"),
    ],
)
def test_invalid_configs_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        Qwen3VLBackboneConfig.tiny(**fields)


@pytest.mark.parametrize("num_cameras", [1, 3])
def test_mrope_positions_equal_transformers_get_rope_index(num_cameras):
    cfg = Qwen3VLBackboneConfig.tiny(num_cameras=num_cameras, image_size=(32, 64))
    layout = sequence_layout(cfg)
    ids = np.full(cfg.sequence_length, 7)
    ids[layout.kind == IMAGE] = cfg.image_token_id
    ids[layout.kind == VISION_START] = cfg.vision_start_token_id
    ids[layout.kind == VISION_END] = cfg.vision_end_token_id
    ids = torch.from_numpy(ids)[None]
    grid = torch.tensor([[1, *cfg.patch_grid]] * num_cameras)
    with torch.device("meta"):
        hf = Qwen3VLModel(hf_config(cfg))  # only get_rope_index is used: no weights needed
    positions, _ = hf.get_rope_index(ids, (ids == cfg.image_token_id).int(), image_grid_thw=grid)
    np.testing.assert_array_equal(positions[:, 0].numpy(), layout.mrope_positions)
    assert layout.vision_mask.sum() == num_cameras * cfg.camera_block_length


def _model(cfg: Qwen3VLBackboneConfig) -> Qwen3VLBackbone:
    torch.manual_seed(0)
    model = Qwen3VLBackbone(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def test_vision_positions_never_see_language():
    """APT Stage 1 relies on it: the instruction cannot change any camera-block hidden state."""
    cfg = Qwen3VLBackboneConfig.tiny(num_cameras=2)
    model = _model(cfg)
    images, ids, mask = random_inputs(cfg, batch=1)
    pixels = normalise(images)
    with torch.no_grad():
        a = model(pixels, ids, mask)
        b = model(pixels, (ids + 11) % cfg.image_token_id, torch.ones_like(mask))
    vision = a.vision_mask[0]
    assert torch.equal(a.hidden_states[:, 0, vision], b.hidden_states[:, 0, vision])
    language = a.language_mask[0]
    assert (a.hidden_states[:, 0, language] - b.hidden_states[:, 0, language]).abs().max() > 1e-2


def test_padding_never_reaches_valid_positions_and_masks_say_what_is_what():
    cfg = Qwen3VLBackboneConfig.tiny()
    model = _model(cfg)
    images, ids, _ = random_inputs(cfg, batch=1)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0]])
    pixels = normalise(images)
    with torch.no_grad():
        a = model(pixels, ids * mask, mask)
        b = model(pixels, torch.where(mask == 1, ids, 123), mask)
    valid = a.vision_mask[0] | a.language_mask[0]
    assert torch.equal(a.hidden_states[:, 0, valid], b.hidden_states[:, 0, valid])
    assert a.language_mask[0].tolist() == [False] * cfg.text_offset + [True] * 5 + [False] * 3
    assert a.vision_mask[0].tolist() == [True] * cfg.text_offset + [False] * cfg.max_text_tokens
    assert a.vision_mask.dtype == a.language_mask.dtype == torch.bool


def test_cameras_are_not_interchangeable():
    """Each camera has its own RoPE positions: swapping the images changes the result."""
    cfg = Qwen3VLBackboneConfig.tiny(num_cameras=2)
    model = _model(cfg)
    images, ids, mask = random_inputs(cfg, batch=1)
    pixels = normalise(images)
    with torch.no_grad():
        a = model(pixels, ids, mask).hidden_states
        b = model(pixels.flip(1), ids, mask).hidden_states
    assert (a[:, :, cfg.text_offset :] - b[:, :, cfg.text_offset :]).abs().max() > 1e-3


def test_wrong_input_shapes_are_clear_errors():
    cfg = Qwen3VLBackboneConfig.tiny(num_cameras=2)
    model = _model(cfg)
    ids, mask = torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 2, 3, 64, 64\]"):
        model(torch.zeros(1, 1, 3, 64, 64), ids, mask)
    with pytest.raises(ValueError, match="input_ids and text_mask must be"):
        model(torch.zeros(1, 2, 3, 64, 64), torch.zeros(1, 9, dtype=torch.long), mask)


def test_fp16_module_keeps_fp32_tables_and_stays_close():
    cfg = Qwen3VLBackboneConfig.tiny()
    model = _model(cfg)
    images, ids, mask = random_inputs(cfg, batch=1)
    with torch.no_grad():
        ref = model(normalise(images), ids, mask).hidden_states
        half = model.half()
        assert half.attn_mask.dtype == half.text_cos.dtype == torch.float32
        out = half(normalise(images), ids, mask).hidden_states
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    cos = torch.nn.functional.cosine_similarity(out.float(), ref, dim=-1)
    assert cos.min() > 0.999


def test_qwen_patchify_equals_the_transformers_processor():
    """IMAGE_MEAN / IMAGE_STD and the documented patch layout reproduce the processor's pixel_values."""
    from apt_policy.model.backbone import IMAGE_MEAN, IMAGE_STD
    from apt_policy.model.backbone.layout import qwen_patchify
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = np.random.default_rng(0).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    processor = Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor.do_resize = False
    expected = processor([image], return_tensors="np")["pixel_values"]
    mean = np.array(IMAGE_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGE_STD, np.float32)[:, None, None]
    chw = (image.astype(np.float32).transpose(2, 0, 1) / 255 - mean) / std
    np.testing.assert_allclose(qwen_patchify(chw), expected, atol=1e-6)


# config.json of Qwen/Qwen3-VL-2B-Instruct as published (transformers 4.57 layout: rope under rope_scaling).
QWEN3VL_2B_CONFIG_JSON = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "image_token_id": 151655,
    "model_type": "qwen3_vl",
    "text_config": {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "dtype": "bfloat16",
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 6144,
        "max_position_embeddings": 262144,
        "model_type": "qwen3_vl_text",
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 5000000,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": 151936,
    },
    "tie_word_embeddings": True,
    "video_token_id": 151656,
    "vision_config": {
        "deepstack_visual_indexes": [5, 11, 17],
        "depth": 24,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1024,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "model_type": "qwen3_vl",
        "num_heads": 16,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2048,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "vision_end_token_id": 151653,
    "vision_start_token_id": 151652,
}


def test_qwen3vl_2b_preset_is_the_published_config():
    cfg = Qwen3VLBackboneConfig.from_hf_config(QWEN3VL_2B_CONFIG_JSON, num_cameras=2)
    assert cfg == Qwen3VLBackboneConfig.qwen3vl_2b(num_cameras=2)


def test_other_model_families_are_rejected_by_name():
    for model_type in ("qwen2_5_vl", "qwen3_vl_moe"):
        with pytest.raises(ValueError, match=f"model_type='{model_type}'"):
            Qwen3VLBackboneConfig.from_hf_config({**QWEN3VL_2B_CONFIG_JSON, "model_type": model_type})


def test_importing_the_backbone_does_not_need_transformers():
    import subprocess
    import sys

    code = "import sys, apt_policy.model.backbone.loading; assert 'transformers' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_tables_are_built_where_the_weights_are():
    """Built under a device context, every table buffer is on that device too (before: always the CPU, so a
    model made under ``torch.device("cuda")`` mixed devices at its first forward); checked on meta."""
    with torch.device("meta"):
        model = Qwen3VLBackbone(Qwen3VLBackboneConfig.tiny(num_cameras=1, image_size=(32, 32)))
    assert {b.device.type for b in model.buffers()} == {"meta"}
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in Qwen3VLBackbone(Qwen3VLBackboneConfig.tiny()).buffers()} == {"cpu"}
