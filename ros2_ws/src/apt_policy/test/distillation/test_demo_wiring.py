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


def test_the_student_reads_the_apt_demos_episodes_instead_of_generating_them(tmp_path: Path, monkeypatch):
    """Same generator, seed and settings: the APT demo's demos.npz is used when its key matches (one copy,
    no second generation); another key (other settings) generates the student's own."""
    import json

    import numpy as np
    from apt_policy.tasks import dataset as ds
    from apt_policy.tasks.dataset import DemoDataset
    from apt_policy.training import distillation_demo as dd

    generated: list[int] = []

    def fake_generate(episodes, stage, config, seed, progress, workers=1):  # type: ignore[no-untyped-def]
        generated.append(episodes)
        return tiny(episodes)

    def tiny(tag: int) -> DemoDataset:
        return DemoDataset(
            images={"front": np.full((1, 2, 2, 3), tag, np.uint8)},
            states=np.zeros((1, 8), np.float32),
            actions=np.zeros((1, 16, 8), np.float32),
            instructions=np.array(["reach the red block"]),
            targets=np.array(["red"]),
            episode=np.zeros(1, np.int64),
            step=np.zeros(1, np.int64),
            stage=2,
            config={},
            state_names=tuple(f"s{i}" for i in range(8)),
            action_names=tuple(f"a{i}" for i in range(8)),
        )

    monkeypatch.setattr(ds, "generate_dataset", fake_generate)
    settings = dd.DistillationDemoSettings(episodes=7)
    apt_root, out = tmp_path / "apt", tmp_path / "student"
    apt_root.mkdir()
    out.mkdir()
    probe = tmp_path / "probe"  # the key written for these settings: the one the APT demo writes for them
    probe.mkdir()
    dd._data(settings, probe, False)
    key = (probe / "demos.key").read_text()
    tiny(42).save(apt_root / "demos.npz")
    (apt_root / "demos.key").write_text(key)
    generated.clear()

    data = dd._data(settings, out, False, apt_root)
    assert generated == [] and int(data.images["front"][0, 0, 0, 0]) == 42
    assert not (out / "demos.npz").exists()

    config, episodes, seed = json.loads(key)
    assert episodes == 7
    (apt_root / "demos.key").write_text(json.dumps([config, 8, seed], sort_keys=True))  # other episodes
    data = dd._data(settings, out, False, apt_root)
    assert generated == [7] and (out / "demos.npz").is_file()
