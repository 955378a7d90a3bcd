"""APTModel: gated fusion starts exactly at Stage 1, sampling is reproducible, prefix reuse is exact."""

from __future__ import annotations

import pytest
import torch
from apt_policy.model import flow
from apt_policy.model.apt import APTModel
from apt_policy.model.bundle import Bundle, stage2_from_stage1
from apt_policy.model.presets import tiny_policy_config

ARCHS = ["pi", "groot"]


def inputs(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    pixels = torch.rand(batch, len(cfg.cameras), 3, h, w, generator=g) * 2 - 1
    ids = torch.randint(2, 60, (batch, cfg.max_instruction_tokens), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 5:] = 0
    state = torch.randn(batch, cfg.state_dim, generator=g)
    noise = torch.randn(batch, cfg.horizon, cfg.action_dim, generator=g)
    return pixels, ids, mask, state, noise


@pytest.fixture(params=ARCHS)
def stage1(request):
    torch.manual_seed(0)
    return APTModel(tiny_policy_config(request.param)).eval()


@torch.no_grad()
def test_closed_gate_stage2_equals_stage1_exactly(stage1):
    model2 = stage2_from_stage1(Bundle(stage1.config, stage1, None, None)).eval()  # type: ignore[arg-type]
    assert model2.config.stage == 2 and len(model2.inserted) == stage1.config.expert.num_layers
    pixels, ids, mask, state, noise = inputs(stage1.config)
    a1 = stage1.sample(*stage1.encode_prefix(pixels, ids, mask), state, noise)
    a2 = model2.sample(*model2.encode_prefix(pixels, ids, mask), state, noise)
    assert torch.max(torch.abs(a1 - a2)).item() == 0.0
    # ... and the inserted layers are live: once their output projection moves, actions change.
    for ins in model2.inserted:
        torch.nn.init.normal_(ins.layer.mlp.down.weight, std=0.1)
    a3 = model2.sample(*model2.encode_prefix(pixels, ids, mask), state, noise)
    assert torch.max(torch.abs(a3 - a1)).item() > 1e-4


@torch.no_grad()
def test_stage1_ignores_language_and_stage2_uses_it(stage1):
    pixels, ids, mask, state, noise = inputs(stage1.config)
    other_ids = ids.flip(-1)
    a = stage1.sample(*stage1.encode_prefix(pixels, ids, mask), state, noise)
    b = stage1.sample(*stage1.encode_prefix(pixels, other_ids, mask), state, noise)
    assert torch.equal(a, b)  # Stage 1 never sees language
    model2 = stage2_from_stage1(Bundle(stage1.config, stage1, None, None)).eval()  # type: ignore[arg-type]
    for ins in model2.inserted:
        torch.nn.init.normal_(ins.layer.mlp.down.weight, std=0.1)
        torch.nn.init.normal_(
            ins.layer.out.weight if hasattr(ins.layer, "out") else ins.layer.out_ca.weight, std=0.1
        )
    a2 = model2.sample(*model2.encode_prefix(pixels, ids, mask), state, noise)
    b2 = model2.sample(*model2.encode_prefix(pixels, other_ids, mask), state, noise)
    assert torch.max(torch.abs(a2 - b2)).item() > 1e-5


@torch.no_grad()
def test_sampling_reproducible_and_noise_dependent(stage1):
    pixels, ids, mask, state, noise = inputs(stage1.config)
    prefix = stage1.encode_prefix(pixels, ids, mask)
    a = stage1.sample(*prefix, state, noise)
    b = stage1.sample(*prefix, state, noise.clone())
    assert torch.equal(a, b)
    c = stage1.sample(*prefix, state, noise + 0.5)
    assert not torch.allclose(a, c)
    assert a.shape == noise.shape and a.dtype == torch.float32


@torch.no_grad()
def test_prefix_reused_equals_recomputed_every_step(stage1):
    cfg = stage1.config
    pixels, ids, mask, state, noise = inputs(cfg)
    reused = stage1.sample(*stage1.encode_prefix(pixels, ids, mask), state, noise)
    x = noise.clone()
    for t in flow.euler_times(cfg.sampling_steps):
        prefix = stage1.encode_prefix(pixels, ids, mask)  # recomputed each step
        v = stage1.velocity(*prefix, state, x, torch.full((x.shape[0],), t))
        x = x - v * (1.0 / cfg.sampling_steps)
    torch.testing.assert_close(reused, x, rtol=0, atol=0)
    names = stage1.prefix_names
    assert len(names) == len(stage1.encode_prefix(pixels, ids, mask))


def test_backbone_frozen_and_flow_loss_trains_expert(stage1):
    pixels, ids, mask, state, noise = inputs(stage1.config)
    with torch.no_grad():
        prefix = stage1.encode_prefix(pixels, ids, mask)
    actions = torch.randn_like(noise)
    loss = stage1.flow_loss(
        prefix, state, actions, noise, flow.sample_time(2, torch.Generator().manual_seed(1))
    )
    loss.backward()
    assert all(p.grad is None for p in stage1.backbone.parameters())
    assert stage1.action_out.weight.grad is not None and stage1.action_out.weight.grad.abs().sum() > 0


def test_flow_time_distribution():
    t = flow.sample_time(20000, torch.Generator().manual_seed(0))
    assert t.min() >= flow.TIME_MIN and t.max() <= 1.0
    # Beta(1.5, 1) has mean 0.6
    assert abs(t.mean().item() - (flow.TIME_MIN + (1 - flow.TIME_MIN) * 0.6)) < 0.01
