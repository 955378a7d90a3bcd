"""The demo model cache per family: APT's command unchanged; the action-prior demo trained on APT's VLM."""

from __future__ import annotations

import json
from pathlib import Path

from apt_policy.demo import model_cache


def test_family_cache_roots_and_train_commands(tmp_path: Path, monkeypatch):
    apt_root = model_cache.demo_root(tmp_path)
    prior_root = model_cache.demo_root(tmp_path, "action_prior")
    assert apt_root.name.startswith("train-") and prior_root.name.startswith("action_prior-train-")
    assert apt_root.parent == prior_root.parent and apt_root.name == prior_root.name.split("-", 1)[1]
    monkeypatch.setattr(model_cache, "_tool", lambda name: name)
    assert model_cache._train_command(tmp_path / "b", "apt", tmp_path) == [
        "apt-train",
        "demo",
        "--out",
        str(tmp_path / "b"),
    ]
    built: list[Path | None] = []

    def fake_apt_bundle(cache=None, verbose=True, family="apt"):
        built.append(cache)
        return tmp_path / family / "stage2"

    monkeypatch.setattr(model_cache, "ensure_demo_bundle", fake_apt_bundle)
    cmd = model_cache._train_command(tmp_path / "p", "action_prior", tmp_path)
    assert built == [tmp_path]  # APT's demo (its grounded VLM, its demonstrations) first
    assert cmd[:4] == ["apt-train", "demo", "--out", str(tmp_path / "p")] and "--family" in cmd
    sets = dict(cmd[i + 1].split("=", 1) for i, arg in enumerate(cmd) if arg == "--set")
    assert json.loads(sets["vlm_from"]) == str(tmp_path / "apt" / "stage2")
    assert json.loads(sets["data"]) == str(tmp_path / "apt" / "demos.npz")
    # The student starts from the 1500-step-grounded APT variant, built with that one setting changed.
    cmd = model_cache._train_command(tmp_path / "s", "action_distillation", tmp_path)
    assert cmd[-2:] == ["--vlm-from", str(tmp_path / model_cache.STUDENT_VLM_FROM / "stage2")]
    variant = model_cache._train_command(tmp_path / "v", model_cache.STUDENT_VLM_FROM, tmp_path)
    assert variant == ["apt-train", "demo", "--out", str(tmp_path / "v"), "--set", "grounding_steps=1500"]
    root = model_cache.demo_root(tmp_path, model_cache.STUDENT_VLM_FROM)
    assert root.name == f"{model_cache.STUDENT_VLM_FROM}-{apt_root.name}"


def test_apt_train_demo_set_names_a_bad_override(tmp_path: Path, capsys):
    from apt_policy.training.cli import main

    out = str(tmp_path / "d")
    assert main(["demo", "--out", out, "--quiet", "--set", "grounding_step=10"]) == 2
    assert "not a field of DemoSettings" in capsys.readouterr().err
    assert main(["demo", "--out", out, "--quiet", "--set", "grounding_steps"]) == 2
    assert "expected KEY=JSON" in capsys.readouterr().err
    assert main(["demo", "--out", out, "--family", "action_prior", "--quiet", "--set", "data=x.npz"]) == 2
    assert "is not JSON" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
