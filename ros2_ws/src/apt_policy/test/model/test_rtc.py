"""Real-time chunking in the model: hard prefix (training-free), per-token clean time (trained), the loss."""

from __future__ import annotations

import pytest
import torch
from apt_policy.model import flow
from apt_policy.model.apt import APTModel
from apt_policy.model.bundle import Bundle, stage2_from_stage1
from apt_policy.model.presets import tiny_policy_config

ARCHS = ["pi", "groot"]


def _live_stage2(stage1: APTModel) -> APTModel:
    """A Stage-2 model whose inserted layers do something (their outputs are zero at init)."""
    model = stage2_from_stage1(Bundle(stage1.config, stage1, None, None)).eval()  # type: ignore[arg-type]
    for ins in model.inserted:
        torch.nn.init.normal_(ins.layer.mlp.down.weight, std=0.1)
    return model


@pytest.fixture(params=[(a, s) for a in ARCHS for s in (1, 2)], ids=lambda p: f"{p[0]}-stage{p[1]}")
def model(request):
    arch, stage = request.param
    torch.manual_seed(0)
    m = APTModel(tiny_policy_config(arch)).eval()
    return m if stage == 1 else _live_stage2(m)


def _inputs(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    pixels = torch.rand(batch, len(cfg.cameras), 3, h, w, generator=g) * 2 - 1
    ids = torch.randint(2, 60, (batch, cfg.max_instruction_tokens), generator=g)
    mask = torch.ones_like(ids)
    mask[:, 5:] = 0
    state = torch.randn(batch, cfg.state_dim, generator=g)
    noise = torch.randn(batch, cfg.horizon, cfg.action_dim, generator=g)
    action_prefix = torch.randn(batch, cfg.horizon, cfg.action_dim, generator=g)
    return pixels, ids, mask, state, noise, action_prefix


@torch.no_grad()
def test_zero_length_prefix_is_bit_identical(model):
    pixels, ids, mask, state, noise, action_prefix = _inputs(model.config)
    prefix = model.encode_prefix(pixels, ids, mask)
    plain = model.sample(*prefix, state, noise)
    zero = torch.zeros(2, dtype=torch.int64)
    for trained in (0.0, 1.0):
        rtc = model.sample(*prefix, state, noise, action_prefix, zero, torch.full((2,), trained))
        assert torch.equal(rtc, plain)
    # a zero clean mask in the one-step velocity is the mask-less velocity bit for bit too
    t = torch.tensor([0.7, 0.3])
    v = model.velocity(*prefix, state, noise, t)
    assert torch.equal(model.velocity(*prefix, state, noise, t, torch.zeros(2, model.config.horizon)), v)


@torch.no_grad()
@pytest.mark.parametrize("trained", [0.0, 1.0])
def test_prefix_rows_equal_prefix_and_rest_changes(model, trained):
    pixels, ids, mask, state, noise, action_prefix = _inputs(model.config)
    prefix = model.encode_prefix(pixels, ids, mask)
    plain = model.sample(*prefix, state, noise)
    d = torch.tensor([3, 1])
    out = model.sample(*prefix, state, noise, action_prefix, d, torch.full((2,), trained))
    assert torch.equal(out[0, :3], action_prefix[0, :3])
    assert torch.equal(out[1, :1], action_prefix[1, :1])
    # the rows after the prefix are generated consistent with it, hence differ from the prefix-less chunk
    assert torch.max(torch.abs(out[0, 3:] - plain[0, 3:])).item() > 1e-4
    assert torch.max(torch.abs(out[1, 1:] - plain[1, 1:])).item() > 1e-4


@torch.no_grad()
def test_hard_prefix_follows_the_path_from_the_initial_noise(model):
    """Each velocity call sees the prefix rows at t * noise + (1 - t) * prefix (training-free) or at the
    prefix itself with those tokens marked clean (trained)."""
    cfg = model.config
    pixels, ids, mask, state, noise, action_prefix = _inputs(cfg)
    prefix = model.encode_prefix(pixels, ids, mask)
    d = torch.tensor([4, 2])
    rows = flow.prefix_rows(d, cfg.horizon)
    for trained in (0.0, 1.0):
        seen = []
        original = model.velocity

        def spy(*args, _orig=original, _seen=seen):
            _seen.append((args[5].clone(), float(args[6][0]), args[7].clone()))
            return _orig(*args)

        model.velocity = spy  # type: ignore[method-assign]
        try:
            model.sample(*prefix, state, noise, action_prefix, d, torch.full((2,), trained))
        finally:
            del model.velocity
        times = flow.euler_times(cfg.sampling_steps)
        assert [t for _, t, _ in seen] == pytest.approx(times, abs=1e-6)
        for (x, _, clean), t in zip(seen, times, strict=True):
            tau = t * (1.0 - trained)
            expected = tau * noise + (1.0 - tau) * action_prefix
            torch.testing.assert_close(x[rows], expected[rows], rtol=0, atol=1e-6)
            assert torch.equal(clean, rows.float() * trained)


@torch.no_grad()
def test_trained_and_training_free_differ_and_clean_time_matters(model):
    cfg = model.config
    pixels, ids, mask, state, noise, action_prefix = _inputs(cfg)
    prefix = model.encode_prefix(pixels, ids, mask)
    d = torch.tensor([3, 3])
    free = model.sample(*prefix, state, noise, action_prefix, d, torch.zeros(2))
    trained = model.sample(*prefix, state, noise, action_prefix, d, torch.ones(2))
    assert torch.max(torch.abs(free[:, 3:] - trained[:, 3:])).item() > 1e-4
    # the clean mask changes the velocity of every token (attention mixes them), for both experts
    t = torch.tensor([0.5, 0.5])
    clean = flow.prefix_rows(d, cfg.horizon).float()
    v0 = model.velocity(*prefix, state, noise, t)
    v1 = model.velocity(*prefix, state, noise, t, clean)
    assert torch.max(torch.abs(v0 - v1)[:, 3:]).item() > 1e-5


@torch.no_grad()
def test_soft_ramp_blends_the_rows_after_the_prefix(model):
    cfg = model.config
    pixels, ids, mask, state, noise, action_prefix = _inputs(cfg)
    prefix = model.encode_prefix(pixels, ids, mask)
    d = torch.tensor([2, 2])
    hard = model.sample(*prefix, state, noise, action_prefix, d, torch.zeros(2))
    soft = model.sample(*prefix, state, noise, action_prefix, d, torch.zeros(2), ramp=3)
    assert torch.equal(soft[:, :2], action_prefix[:, :2])
    # ramp rows move towards the prefix; rows after the ramp are affected only through attention
    dist_hard = torch.abs(hard[:, 2:5] - action_prefix[:, 2:5]).mean()
    dist_soft = torch.abs(soft[:, 2:5] - action_prefix[:, 2:5]).mean()
    assert dist_soft < dist_hard
    w = flow.ramp_weights(torch.tensor([2]), 8, 3)[0]
    torch.testing.assert_close(w, torch.tensor([0, 0, 0.75, 0.5, 0.25, 0, 0, 0]))


def test_rtc_loss_masks_the_clean_prefix(model):
    cfg = model.config
    pixels, ids, mask, state, noise, actions = _inputs(cfg)
    with torch.no_grad():
        prefix = model.encode_prefix(pixels, ids, mask)
    t = torch.tensor([0.6, 0.9])
    delay = torch.tensor([3, 0])
    loss = model.flow_loss(prefix, state, actions, noise, t, delay)
    # reference: the velocity with the first rows clean, squared error averaged over the other rows only
    x_t, target = flow.interpolate(actions, noise, t)
    clean = flow.prefix_rows(delay, cfg.horizon)
    x_t = torch.where(clean[..., None], actions, x_t)
    v = model.velocity(*prefix, state, x_t, t, clean.float())
    err = (v - target) ** 2
    expected = torch.cat([err[0, 3:], err[1, :]]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    # the loss does not depend on the target velocity of the clean rows ...
    changed = noise.clone()
    changed[0, :3] += 5.0  # only the clean rows' noise (hence their target) changes
    assert torch.equal(model.flow_loss(prefix, state, actions, changed, t, delay), loss)
    # ... and delay 0 everywhere is the plain loss
    zero = model.flow_loss(prefix, state, actions, noise, t, torch.zeros(2, dtype=torch.int64))
    torch.testing.assert_close(zero, model.flow_loss(prefix, state, actions, noise, t), rtol=1e-6, atol=0)
    # gradients reach the expert through the masked loss
    loss.backward()
    assert model.action_out.weight.grad is not None and model.action_out.weight.grad.abs().sum() > 0


def test_prefix_rows_and_path():
    rows = flow.prefix_rows(torch.tensor([0, 2, 5]), 4)
    assert rows.tolist() == [[False] * 4, [True, True, False, False], [True] * 4]
    p, n = torch.full((1, 2, 1), 2.0), torch.full((1, 2, 1), -1.0)
    assert torch.equal(flow.prefix_path(p, n, 1.0, torch.zeros(1)), n)  # t = 1: the initial noise
    assert torch.equal(flow.prefix_path(p, n, 0.0, torch.zeros(1)), p)  # t = 0: the prefix
    assert torch.equal(flow.prefix_path(p, n, 0.25, torch.zeros(1)), 0.25 * n + 0.75 * p)
    assert torch.equal(flow.prefix_path(p, n, 0.7, torch.ones(1)), p)  # trained: clean at every t


def test_drift_offsets_grow_over_the_prefix_and_return_after_it():
    drift = torch.tensor([[0.5], [1.0], [2.0]])
    off = flow.drift_offsets(drift, torch.tensor([2, 0, 4]), horizon=8, return_rows=3)[..., 0]
    assert off[0].tolist() == pytest.approx([0.25, 0.5, 0.375, 0.25, 0.125, 0.0, 0.0, 0.0])
    assert off[1].abs().sum() == 0  # no prefix, no drift
    assert off[2, :4].tolist() == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert off[2, 4:].tolist() == pytest.approx([1.5, 1.0, 0.5, 0.0])


@torch.no_grad()
def test_drifted_prefix_trains_a_return_to_the_demonstration(model):
    """The loss with drift is the plain RTC loss on the demonstration shifted by the offsets, and a zero
    drift is the plain RTC loss."""
    cfg = model.config
    pixels, ids, mask, state, noise, actions = _inputs(cfg)
    prefix = model.encode_prefix(pixels, ids, mask)
    t, delay = torch.tensor([0.6, 0.9]), torch.tensor([3, 2])
    drift = torch.randn(2, cfg.action_dim) * 0.1
    shifted = actions + flow.drift_offsets(drift, delay, cfg.horizon, 4)
    torch.testing.assert_close(
        model.flow_loss(prefix, state, actions, noise, t, delay, drift),
        model.flow_loss(prefix, state, shifted, noise, t, delay),
    )
    assert torch.equal(
        model.flow_loss(prefix, state, actions, noise, t, delay, torch.zeros_like(drift)),
        model.flow_loss(prefix, state, actions, noise, t, delay),
    )
    assert torch.equal(shifted[:, 3 + 4 :], actions[:, 3 + 4 :])  # back on the demonstration after return
