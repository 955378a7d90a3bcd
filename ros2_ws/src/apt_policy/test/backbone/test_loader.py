"""load_qwen3vl_checkpoint on real checkpoints written by transformers, and every way they can be wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from apt_policy.model.backbone import Qwen3VLBackboneConfig, load_qwen3vl_checkpoint
from apt_policy.model.backbone.loading import CheckpointError
from hf_reference import random_hf_model, save_hf_model
from safetensors.torch import load_file, save_file

torch.set_num_threads(2)
ARCH = Qwen3VLBackboneConfig.tiny()
DEPLOY = {"image_size": ARCH.image_size, "max_text_tokens": ARCH.max_text_tokens}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_hf_model(random_hf_model(ARCH, seed=3), tmp_path_factory.mktemp("ckpt"))


def _rewrite(src, dst, edit) -> None:
    """Copy checkpoint ``src`` to ``dst`` with ``edit(tensors)`` applied to its weights."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def test_loads_every_weight_of_the_checkpoint(checkpoint):
    model = load_qwen3vl_checkpoint(checkpoint, **DEPLOY)
    saved = load_file(checkpoint / "model.safetensors")
    params = dict(model.named_parameters())
    assert set(params) == set(saved) - {"language_model.norm.weight"}
    for name, value in params.items():
        assert torch.equal(value, saved[name]), name
    assert model.config.num_layers == ARCH.text.num_hidden_layers
    assert not model.training


def test_sharded_checkpoint_loads_the_same_weights(checkpoint, tmp_path):
    sharded = save_hf_model(random_hf_model(ARCH, seed=3), tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the test needs more than one shard"
    a = _state(load_qwen3vl_checkpoint(sharded, **DEPLOY))
    b = _state(load_qwen3vl_checkpoint(checkpoint, **DEPLOY))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_conditional_generation_layout_with_lm_head_loads(checkpoint, tmp_path):
    """Hub checkpoints (Qwen3VLForConditionalGeneration) prefix 'model.' and carry lm_head: both fine."""

    def to_hub_layout(t):
        for key in list(t):
            t["model." + key] = t.pop(key)
        t["lm_head.weight"] = torch.zeros(ARCH.text.vocab_size, ARCH.text.hidden_size)

    _rewrite(checkpoint, tmp_path / "hub", to_hub_layout)
    a = _state(load_qwen3vl_checkpoint(tmp_path / "hub", **DEPLOY))
    b = _state(load_qwen3vl_checkpoint(checkpoint, **DEPLOY))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_truncation_keeps_first_layers_and_ignores_the_rest(checkpoint):
    model = load_qwen3vl_checkpoint(checkpoint, num_layers=2, **DEPLOY)
    assert len(model.language_model.layers) == 2
    saved = load_file(checkpoint / "model.safetensors")
    weight = model.language_model.layers[1].mlp.up_proj.weight
    assert torch.equal(weight, saved["language_model.layers.1.mlp.up_proj.weight"])


def test_missing_tensor_is_named(checkpoint, tmp_path):
    _rewrite(checkpoint, tmp_path / "c", lambda t: t.pop("visual.blocks.1.attn.qkv.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: \['visual\.blocks\.1\.attn\.qkv\.weight'\]"):
        load_qwen3vl_checkpoint(tmp_path / "c", **DEPLOY)


def test_unexpected_tensor_is_named(checkpoint, tmp_path):
    def add(t):
        t["visual.extra_head.weight"] = torch.zeros(3)

    _rewrite(checkpoint, tmp_path / "c", add)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: \['visual\.extra_head\.weight'\]"):
        load_qwen3vl_checkpoint(tmp_path / "c", **DEPLOY)


def test_wrong_shape_is_named_with_both_shapes(checkpoint, tmp_path):
    def shrink(t):
        t["language_model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)

    _rewrite(checkpoint, tmp_path / "c", shrink)
    with pytest.raises(CheckpointError) as err:
        load_qwen3vl_checkpoint(tmp_path / "c", **DEPLOY)
    msg = str(err.value)
    assert "language_model.layers.0.self_attn.k_proj.weight: checkpoint (16, 64) vs model (32, 64)" in msg


def test_missing_files_are_clear(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_qwen3vl_checkpoint(tmp_path)
    shutil.copy(checkpoint / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        load_qwen3vl_checkpoint(tmp_path)


def test_deployment_shape_errors_are_clear(checkpoint):
    with pytest.raises(ValueError, match="multiples of patch_size"):
        load_qwen3vl_checkpoint(checkpoint, image_size=(60, 64))
    with pytest.raises(ValueError, match="num_layers=9"):
        load_qwen3vl_checkpoint(checkpoint, num_layers=9, **DEPLOY)


def test_fp16_load_keeps_tables_in_fp32(checkpoint):
    model = load_qwen3vl_checkpoint(checkpoint, dtype=torch.float16, **DEPLOY)
    assert model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.float16
    assert model.text_cos.dtype == model.attn_mask.dtype == model.pos_weights.dtype == torch.float32
    assert torch.isfinite(model.text_cos).all()
