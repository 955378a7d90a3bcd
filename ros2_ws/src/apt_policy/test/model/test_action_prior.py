"""The action-prior family: its config schema, model properties, both training stages, bundle round trip
and the runtime's history contract (torch backend)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from apt_policy.core.action_prior import ActionPriorConfig
from apt_policy.core.config import ConfigError, PolicyConfig
from apt_policy.core.normalize import Normalizer
from apt_policy.core.preprocess import PreprocessError, build_word_tokenizer
from apt_policy.model.action_prior import ActionPriorModel, tiny_action_prior_config
from apt_policy.model.bundle import load_bundle, read_config, save_bundle
from apt_policy.runtime.policy import History
from apt_policy.runtime.torch_backend import ActionPriorPolicy, load_torch_policy
from apt_policy.tasks.dataset import DemoConfig, generate_dataset
from apt_policy.training.action_prior import (
    PriorTrainConfig,
    action_trajectories,
    history_windows,
    run_prior_stage1,
    run_prior_stage2,
)

DEMO = DemoConfig(image_size=(32, 32), render_size=None, horizon=8, steps_per_episode=12)


# ------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"history_steps": -1}, "family_config.history_steps=-1"),
        ({"latent_dim": 0}, "family_config.latent_dim=0"),
        ({"width": 30, "num_heads": 4}, "family_config.width=30"),
        ({"decoder_layers": 1.5}, "family_config.decoder_layers=1.5"),
        ({"bogus": 1}, r"unknown field\(s\) \['bogus'\]"),
    ],
)
def test_family_config_errors_name_the_field(changes, needle):
    cfg = tiny_action_prior_config()
    bad = {**cfg.family_config, **changes}
    with pytest.raises(ConfigError, match=needle):
        dataclasses.replace(cfg, family_config=bad).validate()
    with pytest.raises(ConfigError, match=needle):
        PolicyConfig.from_dict({**cfg.to_dict(), "family_config": bad})


def test_config_round_trip_and_history_steps():
    cfg = tiny_action_prior_config(history_steps=5)
    again = PolicyConfig.from_json(cfg.to_json())
    assert again == cfg and again.family == "action_prior" and again.history_steps == 5
    assert ActionPriorConfig.from_mapping(again.family_config).history_steps == 5
    apt = dataclasses.replace(cfg, family="apt", family_config={})
    assert apt.validate().history_steps == 0
    with pytest.raises(ConfigError, match="'apt' family takes none"):
        dataclasses.replace(cfg, family="apt").validate()


# -------------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ActionPriorModel(tiny_action_prior_config().with_stage(2)).eval()


def _inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = cfg.history_steps
    return {
        "pixel_values": torch.rand((1, len(cfg.cameras), 3, *cfg.image_size), generator=g) * 2 - 1,
        "input_ids": torch.randint(2, 20, (1, cfg.max_instruction_tokens), generator=g),
        "text_mask": torch.ones((1, cfg.max_instruction_tokens), dtype=torch.int64),
        "state": torch.randn((1, cfg.state_dim), generator=g),
        "noise": torch.randn((1, cfg.horizon, cfg.action_dim), generator=g),
        "hs": torch.randn((1, k, cfg.state_dim), generator=g),
        "ha": torch.randn((1, k, cfg.action_dim), generator=g),
    }


@torch.no_grad()
def test_invalid_history_steps_do_not_matter(model):
    cfg = model.config
    x = _inputs(cfg)
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    token = model.encode_history(x["hs"], x["ha"], mask)
    hs, ha = x["hs"].clone(), x["ha"].clone()
    hs[:, 0] += 5.0
    ha[:, 0] -= 3.0
    torch.testing.assert_close(model.encode_history(hs, ha, mask), token, rtol=0, atol=1e-6)
    hs[:, 2] += 1.0  # a valid step does change the token
    assert not torch.allclose(model.encode_history(hs, ha, mask), token, atol=1e-4)


@torch.no_grad()
def test_rtc_prefix_is_kept_and_empty_prefix_is_the_plain_sampler(model):
    cfg = model.config
    x = _inputs(cfg)
    latent = model.encode_prefix(x["pixel_values"], x["input_ids"], x["text_mask"], x["state"])
    history = model.encode_history(x["hs"], x["ha"], torch.ones(1, cfg.history_steps))
    plain = model.sample(latent, history, x["state"], x["noise"])
    prefix = torch.randn(1, cfg.horizon, cfg.action_dim)
    none = model.sample(latent, history, x["state"], x["noise"], prefix, torch.tensor([0]), torch.ones(1))
    torch.testing.assert_close(none, plain, rtol=0, atol=0)
    for trained in (0.0, 1.0):
        out = model.sample(
            latent, history, x["state"], x["noise"], prefix, torch.tensor([3]), torch.tensor([trained])
        )
        torch.testing.assert_close(out[:, :3], prefix[:, :3], rtol=0, atol=0)
        assert not torch.allclose(out[:, 3:], plain[:, 3:], atol=1e-5)


@torch.no_grad()
def test_stage1_prior_ignores_vision_and_language():
    torch.manual_seed(1)
    prior = ActionPriorModel(tiny_action_prior_config()).eval()
    x, y = _inputs(prior.config, 0), _inputs(prior.config, 1)
    a = prior.encode_prefix(x["pixel_values"], x["input_ids"], x["text_mask"], x["state"])
    b = prior.encode_prefix(y["pixel_values"], y["input_ids"], y["text_mask"], x["state"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ training
def test_history_windows_follow_the_episode():
    states = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    actions = states + 100
    episode = np.array([0] * 4 + [1] * 6)
    step = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 5])
    hs, ha, mask = history_windows(states, actions, episode, step, 3)
    assert mask[0].tolist() == [0, 0, 0] and mask[2].tolist() == [0, 1, 1] and mask[3].tolist() == [1, 1, 1]
    assert hs[3, :, 0].tolist() == [0, 1, 2] and ha[3, -1, 0] == 102
    assert mask[4].tolist() == [0, 0, 0]  # a new episode starts empty
    assert hs[9, :, 0].tolist() == [6, 7, 8]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Stage 1 (action-only) and Stage 2 (distillation, then end to end) run, both bundles."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("action_prior")
    tok = build_word_tokenizer(["reach the red block", "touch the blue cube"], root / "tok.json")
    assert tok.get_vocab_size() < 100
    traj = action_trajectories(12, DEMO, seed=3)
    norm = Normalizer.fit(traj.states, traj.chunks)
    model = ActionPriorModel(tiny_action_prior_config())
    s1, r1 = run_prior_stage1(
        model, norm, traj, root / "tok.json", root / "s1", PriorTrainConfig(steps=150, batch_size=32, lr=3e-3)
    )
    ds = generate_dataset(3, 2, DEMO, seed=4, progress=False)
    cfg2 = PriorTrainConfig(steps=30, batch_size=16, distill_steps=20, lr=3e-3)
    s2, r2 = run_prior_stage2(s1, ds, ds.episode, ds.step, root / "s2", cfg2, progress=False)
    return s1, r1, s2, r2


def test_stage1_learns_and_stage2_reuses_the_decoder(trained):
    s1, r1, s2, r2 = trained
    assert r1.mean_loss(-30, None) < 0.7 * r1.mean_loss(0, 30)
    assert len(r2.distill_losses) == 20 and r2.distill_losses[-1] < r2.distill_losses[0]
    b1, b2 = load_bundle(s1), load_bundle(s2)
    assert b1.config.stage == 1 and b2.config.stage == 2 and b2.config.family == "action_prior"
    assert read_config(s2).history_steps == 3
    w1, w2 = b1.model.state_dict(), b2.model.state_dict()
    # stage 2 started from the prior: the decoder moved only during the end-to-end steps (10 of 30)
    assert not torch.equal(w1["decoder.out.weight"], w2["decoder.out.weight"])
    delta = (w1["decoder.out.weight"] - w2["decoder.out.weight"]).abs().max()
    assert delta < 0.2 * w1["decoder.out.weight"].abs().max()


def test_runtime_history_contract(trained):
    _, _, s2, _ = trained
    policy = load_torch_policy(s2, seed=0)
    assert isinstance(policy, ActionPriorPolicy)
    info = policy.info
    assert info.history_steps == 3 and info.family == "action_prior" and info.rtc_inputs
    rng = np.random.default_rng(0)
    images = {"front": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)}
    state = rng.normal(0, 0.3, 8).astype(np.float32)
    noise = np.zeros((info.horizon, info.action_dim), np.float32)
    start = policy.predict(images, state, "reach the red block", noise)
    empty = History.empty(5, 8, 8)  # more steps than K: the last K are used
    np.testing.assert_array_equal(
        policy.predict(images, state, "reach the red block", noise, history=empty), start
    )
    past = History(rng.normal(0, 0.3, (3, 8)), rng.normal(0, 0.3, (3, 8)), np.ones(3, bool))
    moved = policy.predict(images, state, "reach the red block", noise, history=past)
    assert moved.shape == start.shape and not np.allclose(moved, start)
    prefix = moved[:2]
    kept = policy.predict(images, state, "reach the red block", noise, prefix=prefix, history=past)
    np.testing.assert_allclose(kept[:2], prefix, atol=1e-5)
    with pytest.raises(PreprocessError, match="history"):
        policy.predict(images, state, "x", noise, history=History.empty(2, 8, 8))
    with pytest.raises(PreprocessError, match="non-finite"):
        bad = History(np.full((3, 8), np.nan), np.zeros((3, 8)), np.ones(3, bool))
        policy.predict(images, state, "x", noise, history=bad)


def test_apt_ignores_history(tmp_path):
    from apt_policy.model.apt import APTModel
    from apt_policy.model.presets import tiny_policy_config

    torch.manual_seed(0)
    cfg = tiny_policy_config()
    rng = np.random.default_rng(0)
    norm = Normalizer.fit(rng.normal(size=(50, cfg.state_dim)), rng.normal(size=(50, cfg.horizon, 7)))
    build_word_tokenizer(["reach the red block"], tmp_path / "tok.json")
    path = save_bundle(tmp_path / "b", APTModel(cfg), norm, tmp_path / "tok.json")
    policy = load_torch_policy(path)
    assert policy.info.history_steps == 0 and policy.info.family == "apt"
    images = {c: np.zeros((32, 32, 3), np.uint8) for c in cfg.cameras}
    state = np.zeros(cfg.state_dim, np.float32)
    noise = np.zeros((cfg.horizon, cfg.action_dim), np.float32)
    a = policy.predict(images, state, "reach the red block", noise)
    junk = History(np.full((2, 3), np.nan), np.zeros((1, 1)), np.ones(4, bool))  # not even read
    np.testing.assert_array_equal(
        policy.predict(images, state, "reach the red block", noise, history=junk), a
    )


@pytest.mark.parametrize("k", [0, 2])
def test_history_token_stays_on_the_inputs_device_and_dtype(k):
    """The K = 0 zero token is made where the inputs live (a CUDA run must not get a CPU tensor); checked on
    the meta device, which fails a CPU/meta mix like a CPU/CUDA one."""
    model = ActionPriorModel(tiny_action_prior_config(history_steps=k).with_stage(2)).to("meta")
    steps = max(k, 1)
    inputs = (torch.zeros(1, steps, 8), torch.zeros(1, steps, 8), torch.ones(1, steps))
    token = model.encode_history(*(t.to("meta") for t in inputs))
    assert token.device.type == "meta" and token.dtype == torch.float32 and tuple(token.shape) == (1, 16)
