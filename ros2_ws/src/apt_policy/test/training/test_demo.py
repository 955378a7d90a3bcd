"""The demo pipeline end to end at toy size: bundles, eval report, and the cache."""

from __future__ import annotations

import json

import pytest
from apt_policy.model.bundle import load_bundle
from apt_policy.tasks.instructions import HELD_OUT_INSTRUCTIONS
from apt_policy.training.demo import run_demo

TOY = {
    "episodes": 3,
    "steps_per_episode": 4,
    "image_size": (32, 48),
    "render_size": None,
    "patch_size": 8,
    "horizon": 4,
    "width": 32,
    "layers": 1,
    "stage1_steps": 4,
    "stage2_steps": 3,
    "batch_size": 8,
    "eval_max_steps": 4,
    "grounding_steps": 2,
    "rtc_max_delay": 2,  # the demo trains real-time chunking (default 4 needs a horizon > 4)
}


@pytest.mark.slow
def test_demo_writes_bundles_and_report_and_reuses_them(tmp_path):
    report = run_demo(tmp_path, eval_episodes=3, progress=False, **TOY)
    assert load_bundle(tmp_path / "stage1").config.stage == 1
    assert load_bundle(tmp_path / "stage2").config.stage == 2
    for stage in ("stage1", "stage2"):  # both bundles record the trained RTC delay bound
        assert load_bundle(tmp_path / stage).config.rtc_max_delay == 2
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    for key in ("stage1/train_phrasing", "stage1/held_out_phrasing", "stage2/train_phrasing"):
        result = on_disk["results"][key]
        assert result["episodes"] == 3 and 0.0 <= result["success_rate"] <= 1.0
        assert sum(v["episodes"] for v in result["per_instruction"].values()) == 3
    held = on_disk["results"]["stage2/held_out_phrasing"]["per_instruction"]
    assert set(held) <= set(HELD_OUT_INSTRUCTIONS)  # the held-out phrasing, never a training template
    mtime = (tmp_path / "stage2" / "model.safetensors").stat().st_mtime_ns
    again = run_demo(tmp_path, eval_episodes=3, progress=False, **TOY)
    assert again["results"] == report["results"]
    assert (tmp_path / "stage2" / "model.safetensors").stat().st_mtime_ns == mtime  # cached, not retrained
