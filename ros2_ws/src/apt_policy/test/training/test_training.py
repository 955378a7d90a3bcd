"""apt-train on tiny data: loss goes down, stage2 --steps 0 equals Stage 1, resume is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from apt_policy.core.config import PolicyConfig
from apt_policy.model.apt import APTModel
from apt_policy.runtime.torch_backend import APTPolicy
from apt_policy.tasks.dataset import DemoConfig, generate_dataset
from apt_policy.training.cli import main
from apt_policy.training.trainer import latest_checkpoint, sample_delay
from safetensors.torch import load_file

TINY = ["--width", "32", "--heads", "2", "--layers", "1", "--vlm-layers", "2", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    cfg = DemoConfig(cameras=("front",), image_size=(32, 32), horizon=4, steps_per_episode=6)
    ds = generate_dataset(4, 2, cfg, seed=3, progress=False)
    return ds.save(tmp_path_factory.mktemp("data") / "demos.npz")


@pytest.fixture(scope="module", params=["pi", "groot"])
def stage1(request, data_path, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"s1_{request.param}") / "stage1"
    args = ["stage1", "--data", str(data_path), "--out", str(out), "--steps", "40", "--batch-size", "16"]
    assert main([*args, "--arch", request.param, "--lr", "3e-3", "--checkpoint-every", "20", *TINY]) == 0
    return out


def test_short_run_reduces_loss(stage1):
    losses = json.loads((stage1 / "train_log.json").read_text())["losses"]
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert latest_checkpoint(stage1).name == "step_0000040.pt"


def test_stage2_with_zero_steps_predicts_exactly_stage1(stage1, data_path, tmp_path):
    out = tmp_path / "stage2"
    assert (
        main(["stage2", "--init", str(stage1), "--data", str(data_path), "--out", str(out), "--steps", "0"])
        == 0
    )
    p1, p2 = APTPolicy.from_bundle(stage1), APTPolicy.from_bundle(out)
    assert p2.config.stage == 2 and p1.config.stage == 1
    rng = np.random.default_rng(0)
    for instruction in ("reach the red block", "go touch the blue one"):
        images = {"front": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}
        state = p1.normalizer.unnormalize_state(rng.normal(size=p1.config.state_dim).astype(np.float32))
        noise = rng.normal(size=(p1.config.horizon, p1.config.action_dim)).astype(np.float32)
        a1 = p1.predict(images, state, instruction, noise)
        a2 = p2.predict(images, state, instruction, noise)
        assert np.max(np.abs(a1 - a2)) == 0.0


def test_stage2_training_moves_only_inserted_layers(stage1, data_path, tmp_path):
    out = tmp_path / "stage2"
    args = ["stage2", "--init", str(stage1), "--data", str(data_path), "--out", str(out), "--steps", "5"]
    assert main([*args, "--batch-size", "8", "--quiet", "--threads", "1"]) == 0
    before, after = load_file(str(stage1 / "model.safetensors")), load_file(str(out / "model.safetensors"))
    changed = [k for k in after if k not in before or not torch.equal(before[k], after[k])]
    assert changed and all(k.startswith(("inserted.", "inserted_contexts.")) for k in changed)
    assert any(k.endswith(".gate") for k in changed) or any("down" in k for k in changed)


def test_resume_continues_exactly(data_path, tmp_path):
    base = ["--data", str(data_path), "--batch-size", "8", "--lr", "3e-3", "--checkpoint-every", "3", *TINY]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["stage1", "--out", str(full), "--steps", "6", *base]) == 0
    assert main(["stage1", "--out", str(part), "--steps", "3", *base]) == 0
    assert main(["stage1", "--out", str(part), "--steps", "6", "--resume", *base]) == 0
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_full = json.loads((full / "train_log.json").read_text())["losses"]
    log_part = json.loads((part / "train_log.json").read_text())["losses"]
    assert len(log_full) == 6 and log_part == log_full  # history restored, steps 4-6 identical
    at3 = torch.load(part / "checkpoints" / "step_0000003.pt", weights_only=True)["expert"]
    assert not torch.equal(at3["action_out.weight"], b["action_out.weight"])  # it did train on


def test_cli_errors_are_clear(tmp_path, capsys):
    assert (
        main(["stage2", "--init", str(tmp_path / "nope"), "--data", str(tmp_path / "x.npz"), "--out", "o"])
        == 2
    )
    assert "error" in capsys.readouterr().err


def test_rtc_training_draws_delays_and_bundles_record_them(data_path, tmp_path, monkeypatch):
    """--rtc-max-delay N: every step's flow loss gets a delay d ~ U{0..N} per sample; the bundle records N,
    Stage 2 keeps it unless told otherwise; without it no delay is drawn (the plain loss)."""
    seen: list[torch.Tensor | None] = []
    original = APTModel.flow_loss

    def spy(self, prefix, state, actions, noise, t, delay=None, drift=None):
        assert drift is None  # the CLI trains without prefix drift (TrainConfig.rtc_drift_share 0)
        seen.append(None if delay is None else delay.clone())
        return original(self, prefix, state, actions, noise, t, delay, drift)

    monkeypatch.setattr(APTModel, "flow_loss", spy)
    base = ["--data", str(data_path), "--batch-size", "16", "--steps", "6", *TINY]
    s1 = tmp_path / "s1"
    assert main(["stage1", "--out", str(s1), "--rtc-max-delay", "2", *base]) == 0
    assert PolicyConfig.from_json(s1 / "config.json").rtc_max_delay == 2
    assert len(seen) == 6 and all(d is not None and d.shape == (16,) for d in seen)
    drawn = torch.cat([d for d in seen if d is not None])
    assert drawn.min() == 0 and drawn.max() == 2 and drawn.dtype == torch.int64
    seen.clear()
    s2 = tmp_path / "s2"
    args = ["stage2", "--init", str(s1), "--data", str(data_path), "--out", str(s2), "--steps", "2"]
    assert main([*args, "--quiet", "--threads", "1"]) == 0
    assert PolicyConfig.from_json(s2 / "config.json").rtc_max_delay == 2 and len(seen) == 2
    s2b = tmp_path / "s2b"
    args = ["stage2", "--init", str(s1), "--data", str(data_path), "--out", str(s2b), "--steps", "1"]
    assert main([*args, "--rtc-max-delay", "0", "--quiet", "--threads", "1"]) == 0
    assert PolicyConfig.from_json(s2b / "config.json").rtc_max_delay == 0 and seen[-1] is None
    g = torch.Generator().manual_seed(0)
    assert sample_delay(8, 0, g) is None
    counts = torch.bincount(sample_delay(6000, 4, g), minlength=5)  # type: ignore[arg-type]
    assert counts.numel() == 5 and counts.min() > 1000  # uniform over 0..4
    # a bound the horizon cannot hold (4 actions: at most 3) is refused with a clear error
    assert main(["stage1", "--out", str(tmp_path / "bad"), "--rtc-max-delay", "4", *base]) == 2


def test_prefix_drift_is_drawn_only_for_rtc_and_on_its_share_of_samples():
    from apt_policy.training.trainer import TrainConfig, sample_drift

    actions = torch.zeros(400, 16, 8)
    delay = torch.ones(400, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    assert sample_drift(actions, None, TrainConfig(rtc_drift_share=1.0), g) is None  # no RTC: nothing
    assert sample_drift(actions, delay, TrainConfig(), g) is None  # share 0 (default): nothing drawn
    drift = sample_drift(actions, delay, TrainConfig(rtc_drift_share=0.5, rtc_drift_std=0.1), g)
    assert drift is not None and drift.shape == (400, 8)
    drifted = (drift.abs().sum(dim=1) > 0).float().mean()
    assert 0.4 < float(drifted) < 0.6
    assert 0.08 < float(drift[drift != 0].std()) < 0.12
    with pytest.raises(ValueError, match="rtc_drift_share"):
        TrainConfig(rtc_drift_share=1.5)


# ------------------------------------------------------------------ the action-prior family via the CLI
PRIOR = ["--family", "action_prior", "--history-steps", "2", "--latent-dim", "8", *TINY]


@pytest.fixture(scope="module")
def prior_stage1(data_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "stage1"
    args = ["stage1", "--data", str(data_path), "--out", str(out), "--steps", "60", "--batch-size", "16"]
    assert main([*args, "--lr", "3e-3", *PRIOR]) == 0
    return out


def _weights(bundle, prefix: str) -> dict:
    return {k: v for k, v in load_file(str(bundle / "model.safetensors")).items() if k.startswith(prefix)}


def test_action_prior_stage1_trains_the_action_module_on_the_dataset(prior_stage1):
    from apt_policy.runtime.load import load_policy

    config = json.loads((prior_stage1 / "config.json").read_text())
    assert config["family"] == "action_prior" and config["stage"] == 1
    assert config["family_config"]["history_steps"] == 2 and config["family_config"]["latent_dim"] == 8
    losses = json.loads((prior_stage1 / "train_log.json").read_text())["losses"]
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    policy = load_policy(prior_stage1, backend="torch")
    assert policy.info.family == "action_prior" and policy.info.history_steps == 2


def test_action_prior_stage2_reuses_the_decoder_and_distils_first(prior_stage1, data_path, tmp_path):
    """During --distill-steps only the latent head trains (the reused decoder stays the Stage-1 one);
    after them the decoder trains too."""
    base = ["--init", str(prior_stage1), "--data", str(data_path), "--batch-size", "8", "--quiet"]
    distilled, end_to_end = tmp_path / "distilled", tmp_path / "e2e"
    assert main(["stage2", *base, "--out", str(distilled), "--steps", "3", "--distill-steps", "3"]) == 0
    assert main(["stage2", *base, "--out", str(end_to_end), "--steps", "5", "--distill-steps", "3"]) == 0
    stage1 = _weights(prior_stage1, "decoder.")
    assert stage1 and set(stage1) == set(_weights(distilled, "decoder."))
    for name, value in _weights(distilled, "decoder.").items():
        torch.testing.assert_close(value, stage1[name], rtol=0, atol=0)
    moved = [k for k, v in _weights(end_to_end, "decoder.").items() if not torch.equal(v, stage1[k])]
    assert moved
    head = _weights(distilled, "head.")
    assert head and any(not torch.equal(v, _weights(end_to_end, "head.")[k]) for k, v in head.items())
    config = json.loads((distilled / "config.json").read_text())
    assert config["family"] == "action_prior" and config["stage"] == 2
    log = json.loads((distilled / "train_log.json").read_text())
    assert len(log["distill_losses"]) == 3


@pytest.mark.parametrize("stage", [1, 2])
def test_action_prior_resume_continues_exactly(prior_stage1, data_path, tmp_path, stage):
    """Interrupted at step 4 and resumed to 8 = 8 uninterrupted steps, bit for bit (Stage 2 crosses the
    switch from distillation to end-to-end training after the resume)."""
    if stage == 1:
        base = ["stage1", "--data", str(data_path), "--batch-size", "8", *PRIOR]
    else:
        base = ["stage2", "--init", str(prior_stage1), "--data", str(data_path), "--batch-size", "8",
                "--distill-steps", "6", "--quiet"]  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*base, "--out", str(full), "--steps", "8"]) == 0
    assert main([*base, "--out", str(part), "--steps", "4", "--checkpoint-every", "2"]) == 0
    assert latest_checkpoint(part).name == "step_0000004.pt"
    assert main([*base, "--out", str(part), "--steps", "8", "--resume"]) == 0
    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    log_a = json.loads((full / "train_log.json").read_text())
    log_b = json.loads((part / "train_log.json").read_text())
    assert log_a["losses"] == log_b["losses"] and log_a["distill_losses"] == log_b["distill_losses"]


def test_action_prior_cli_refuses_what_it_cannot_do(prior_stage1, data_path, tmp_path, capsys):
    base = ["--data", str(data_path), "--steps", "2", "--quiet"]
    assert main(["stage1", *base, "--out", str(tmp_path / "r"), "--resume", *PRIOR]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["stage2", "--init", str(prior_stage1), *base, "--out", str(tmp_path / "t"),
                 "--train", "expert"]) == 2  # fmt: skip
    assert "--train is APT's" in capsys.readouterr().err
    assert main(["stage1", *base, "--out", str(tmp_path / "a"), "--arch", "groot", *PRIOR]) == 2
    assert "--arch" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in ("r", "t"))
    assert not list(tmp_path.glob("a*"))  # not even the default tokenizer beside --out


def test_action_prior_with_start_views_through_both_stages(data_path, tmp_path):
    """``--start-views`` adds ``<camera>@start`` to the Stage-1 bundle's cameras (and the VLM's layout);
    Stage 2 builds those views from the same saved data, and the policy asks for them."""
    from apt_policy.runtime.load import load_policy

    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    args = ["stage1", "--data", str(data_path), "--out", str(s1), "--steps", "3", "--batch-size", "8"]
    assert main([*args, "--start-views", "--quiet", *PRIOR]) == 0
    config = json.loads((s1 / "config.json").read_text())
    assert config["cameras"] == ["front", "front@start"] and config["backbone"]["num_cameras"] == 2
    base = ["--init", str(s1), "--data", str(data_path), "--batch-size", "8", "--quiet"]
    assert main(["stage2", *base, "--out", str(s2), "--steps", "2", "--distill-steps", "1"]) == 0
    policy = load_policy(s2, backend="torch")
    assert policy.info.cameras == ("front", "front@start")
