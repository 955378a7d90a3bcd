"""Bundle round trip, every validation error, and APTPolicy.predict through core preprocessing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from apt_policy.core.normalize import Normalizer
from apt_policy.core.preprocess import PreprocessError, build_word_tokenizer
from apt_policy.model.apt import APTModel
from apt_policy.model.bundle import BundleError, load_bundle, save_bundle
from apt_policy.model.presets import tiny_policy_config
from apt_policy.runtime.torch_backend import APTPolicy
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module", params=["pi", "groot"])
def bundle_dir(request, tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_policy_config(request.param)
    model = APTModel(cfg)
    rng = np.random.default_rng(0)
    norm = Normalizer.fit(
        rng.normal(size=(100, cfg.state_dim)), rng.normal(2.0, 3.0, size=(100, cfg.horizon, cfg.action_dim))
    )
    root = tmp_path_factory.mktemp(f"bundle_{request.param}")
    tok = build_word_tokenizer(["reach the red block", "touch the blue cube"], root / "tok.json")
    assert tok.get_vocab_size() < 100
    return save_bundle(root / "bundle", model, norm, root / "tok.json"), model


def observation(cfg, seed=0):
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for c in cfg.cameras}
    state = rng.normal(size=cfg.state_dim).astype(np.float32)
    noise = rng.normal(size=(cfg.horizon, cfg.action_dim)).astype(np.float32)
    return images, state, noise


def test_round_trip_predicts_identically(bundle_dir):
    path, model = bundle_dir
    b = load_bundle(path)
    assert b.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    policy = APTPolicy.from_bundle(path)
    again = APTPolicy.from_bundle(path)
    images, state, noise = observation(policy.config)
    a = policy.predict(images, state, "reach the red block", noise)
    assert a.shape == (policy.config.horizon, policy.config.action_dim) and a.dtype == np.float32
    np.testing.assert_array_equal(a, again.predict(images, state, "reach the red block", noise))
    assert policy.info.backend == "torch" and policy.info.cameras == policy.config.cameras
    policy.warmup()
    # robot units: predictions are un-normalised with the bundle's stats (actions ~ N(2, 3) here)
    assert not np.allclose(a, policy.normalizer.normalize_actions(a))


def test_predict_rejects_bad_inputs(bundle_dir):
    policy = APTPolicy.from_bundle(bundle_dir[0])
    images, state, noise = observation(policy.config)
    with pytest.raises(PreprocessError, match="unknown camera"):
        policy.predict({**images, "side": images["front"]}, state, "x", noise)
    with pytest.raises(ValueError, match="state has shape"):
        policy.predict(images, state[:3], "x", noise)
    with pytest.raises(ValueError, match="non-finite"):
        policy.predict(images, np.full_like(state, np.nan), "x", noise)
    with pytest.raises(ValueError, match="noise has shape"):
        policy.predict(images, state, "x", noise[:2])


def test_noise_scale_zero_samples_from_the_flow_origin(bundle_dir, tmp_path):
    """A bundle with noise_scale 0 predicts deterministically: exactly what zero noise gives."""
    policy = APTPolicy.from_bundle(corrupt(bundle_dir[0], tmp_path / "b", _edit_config("noise_scale", 0.0)))
    assert policy.config.noise_scale == 0.0
    images, state, _ = observation(policy.config)
    first = policy.predict(images, state, "reach the red block")
    np.testing.assert_array_equal(first, policy.predict(images, state, "reach the red block"))
    zero = np.zeros((policy.config.horizon, policy.config.action_dim), np.float32)
    np.testing.assert_array_equal(first, policy.predict(images, state, "reach the red block", zero))
    sampled = APTPolicy.from_bundle(bundle_dir[0])  # noise_scale 1: a fresh draw per call
    assert not np.array_equal(
        sampled.predict(images, state, "reach the red block"),
        sampled.predict(images, state, "reach the red block"),
    )


def corrupt(src, dst, fn):
    shutil.copytree(src, dst)
    fn(dst)
    return dst


def _edit_config(key, value):
    def fn(d):
        data = json.loads((d / "config.json").read_text())
        data[key] = value
        (d / "config.json").write_text(json.dumps(data))

    return fn


def _drop_tensor(d):
    t = load_file(str(d / "model.safetensors"))
    t.pop(sorted(t)[-1])
    save_file(t, str(d / "model.safetensors"))


def _reshape_tensor(d):
    t = load_file(str(d / "model.safetensors"))
    t["action_out.weight"] = torch.zeros(3, 3)
    save_file(t, str(d / "model.safetensors"))


def _short_stats(d):
    data = json.loads((d / "norm_stats.json").read_text())
    for k in ("mean", "std", "q01", "q99"):
        data["state"][k] = data["state"][k][:3]
    (d / "norm_stats.json").write_text(json.dumps(data))


def _truncate(name: str, keep: float):
    """Keep the first ``keep`` bytes (int) or fraction (float) of ``name``."""

    def mutate(d):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])

    return mutate


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: (d / "tokenizer.json").unlink(), r"missing \['tokenizer.json'\]"),
        (lambda d: (d / "model.safetensors").unlink(), r"missing \['model.safetensors'\]"),
        (_edit_config("format_version", 7), "config.json: format_version=7"),
        (
            _edit_config("cameras", ["front", "side"]),
            None,
        ),  # consistent count: loads, predict must name camera
        (_edit_config("architecture", "rt2"), "architecture='rt2'"),
        (_drop_tensor, "missing tensors"),
        (_reshape_tensor, "'action_out.weight' has shape"),
        (_short_stats, "norm_stats.json: statistics have state dim 3"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "cannot read safetensors"),
        (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json"),
        # truncated copies of the weights, at the header, in the header, in the tensor data
        (_truncate("model.safetensors", 4), "cannot read safetensors"),
        (_truncate("model.safetensors", 0.01), "cannot read safetensors"),
        (_truncate("model.safetensors", 0.9), "cannot read safetensors"),
        (lambda d: (d / "norm_stats.json").write_text('{"state": {"mean": ['), "norm_stats.json"),
        (lambda d: (d / "config.json").write_text('{"format_version": 1, "hor'), "config"),
    ],
)
def test_every_validation_error_names_the_problem(bundle_dir, tmp_path, mutate, needle):
    bad = corrupt(bundle_dir[0], tmp_path / "bad", mutate)
    if needle is None:
        policy = APTPolicy.from_bundle(bad)
        images, state, noise = observation(bundle_dir[1].config)  # the robot still sends front + wrist
        with pytest.raises(PreprocessError, match=r"unknown camera\(s\) \['wrist'\]"):
            policy.predict(images, state, "x", noise)
        return
    with pytest.raises(BundleError, match=needle):
        load_bundle(bad)


def test_missing_directory(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nothing")
