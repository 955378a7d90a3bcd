"""The demo's family switch: its own cache directory and the node parameters a 3-action chunk needs."""

from __future__ import annotations

from pathlib import Path

from apt_policy.demo import model_cache
from apt_policy.demo.__main__ import _parser
from apt_policy.demo.run import DemoOptions, node_overrides


def test_family_has_its_own_cache_dir_and_node_overrides(tmp_path: Path):
    apt = model_cache.demo_root(tmp_path)
    distill = model_cache.demo_root(tmp_path, "action_distillation")
    assert apt != distill and apt.parent == distill.parent
    assert apt.name.startswith("train-") and distill.name.startswith("action_distillation-")
    assert not model_cache.demo_bundle_is_cached(tmp_path)
    assert node_overrides(DemoOptions()) == []
    args = node_overrides(DemoOptions(family="action_distillation", chunk_execution="crossfade"))
    assert args == [
        "-p",
        "chunk_execution:=crossfade",
        "-p",
        "chunk_request_threshold:=-1",
        "-p",
        "blending_steps:=1",
    ]
    assert _parser().parse_args(["--family", "action_distillation"]).family == "action_distillation"


def test_apt_train_demo_needs_the_vlm_to_start_from(tmp_path: Path, capsys):
    from apt_policy.training.cli import main

    assert main(["demo", "--out", str(tmp_path / "d"), "--family", "action_distillation", "--quiet"]) == 2
    assert "--vlm-from" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
