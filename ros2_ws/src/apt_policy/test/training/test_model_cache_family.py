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

    def fake_apt_bundle(cache=None, verbose=True):
        built.append(cache)
        return tmp_path / "apt" / "stage2"

    monkeypatch.setattr(model_cache, "ensure_demo_bundle", fake_apt_bundle)
    cmd = model_cache._train_command(tmp_path / "p", "action_prior", tmp_path)
    assert built == [tmp_path]  # APT's demo (its grounded VLM, its demonstrations) first
    assert cmd[:4] == ["apt-train", "demo", "--out", str(tmp_path / "p")] and "--family" in cmd
    sets = dict(cmd[i + 1].split("=", 1) for i, arg in enumerate(cmd) if arg == "--set")
    assert json.loads(sets["vlm_from"]) == str(tmp_path / "apt" / "stage2")
    assert json.loads(sets["data"]) == str(tmp_path / "apt" / "demos.npz")
