"""PolicyConfig: JSON round trip and validation errors that name the field."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from apt_policy.core.config import ActionSemantics, ConfigError, ExpertConfig, PolicyConfig


def make_config(**overrides) -> PolicyConfig:
    base = PolicyConfig(
        architecture="pi",
        backbone={"num_layers": 4, "num_cameras": 2, "image_size": [32, 32], "max_text_tokens": 8},
        expert=ExpertConfig(width=32, num_heads=2, head_dim=16, mlp_dim=64, num_layers=2),
        layer_map=(1, 3),
        cameras=("front", "wrist"),
        image_size=(32, 32),
        max_instruction_tokens=8,
        state_names=tuple(f"j{i}" for i in range(7)),
        action_names=tuple(f"a{i}" for i in range(7)),
        horizon=8,
        control_dt=0.1,
        action_semantics=ActionSemantics(arm="delta", arm_scale=0.2, gripper="none"),
    )
    return replace(base, **overrides)


def test_json_round_trip_is_exact(tmp_path):
    cfg = make_config().validate()
    path = tmp_path / "config.json"
    cfg.to_json(path)
    back = PolicyConfig.from_json(path)
    assert back == cfg
    assert back.state_dim == 7 and back.action_dim == 7
    assert back.with_stage(2).num_expert_layers == 4


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"architecture": "rt2"}, "architecture"),
        ({"layer_map": (1,)}, "layer_map"),
        ({"layer_map": (1, 9)}, "layer_map[1]=9"),
        ({"cameras": ("a", "a")}, "cameras"),
        ({"state_names": ()}, "state_names"),
        ({"image_size": (0, 32)}, "image_size"),
        ({"horizon": 0}, "horizon"),
        ({"control_dt": float("nan")}, "control_dt"),
        ({"stage": 3}, "stage"),
        ({"noise_scale": -0.1}, "noise_scale"),
        ({"noise_scale": float("nan")}, "noise_scale"),
        ({"normalization": "minmax"}, "normalization"),
        ({"image_std": (0.5, 0.0, 0.5)}, "image_std"),
        ({"action_semantics": ActionSemantics(arm="torque")}, "action_semantics.arm"),
        ({"action_semantics": ActionSemantics(arm_scale=-1.0)}, "arm_scale"),
        ({"expert": ExpertConfig(num_heads=0)}, "expert.num_heads"),
        ({"format_version": 99}, "format_version"),
        ({"cameras": ("front",)}, "backbone.num_cameras=2 disagrees"),
        ({"max_instruction_tokens": 9}, "backbone.max_text_tokens"),
    ],
)
def test_validation_names_the_field(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        make_config(**overrides).validate()


def test_from_json_rejects_unknown_missing_and_bad_version(tmp_path):
    data = make_config().to_dict()
    with pytest.raises(ConfigError, match="unknown field"):
        PolicyConfig.from_dict({**data, "extra": 1})
    partial = dict(data)
    del partial["horizon"]
    with pytest.raises(ConfigError, match=r"missing field.*horizon"):
        PolicyConfig.from_dict(partial)
    with pytest.raises(ConfigError, match="format_version"):
        PolicyConfig.from_dict({**data, "format_version": 2})
    with pytest.raises(ConfigError, match="not found"):
        PolicyConfig.from_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        PolicyConfig.from_json(tmp_path / "bad.json")
    assert json.loads(make_config().to_json())["stage"] == 1


def test_rtc_max_delay_round_trip_default_and_validation(tmp_path):
    cfg = make_config(rtc_max_delay=4).validate()
    cfg.to_json(tmp_path / "config.json")
    back = PolicyConfig.from_json(tmp_path / "config.json")
    assert back.rtc_max_delay == 4 and back == cfg
    assert back.with_stage(2).rtc_max_delay == 4  # Stage 2 keeps the Stage-1 training setting
    assert cfg.with_rtc_max_delay(0).rtc_max_delay == 0
    # a bundle written before the field existed loads unchanged, as not trained for RTC
    old = make_config().validate().to_dict()
    del old["rtc_max_delay"]
    assert PolicyConfig.from_dict(old).rtc_max_delay == 0
    for bad in (-1, 8, 9, 2.0, True, "3"):  # horizon 8: at least one row must keep a loss
        with pytest.raises(ConfigError, match="rtc_max_delay"):
            make_config(rtc_max_delay=bad).validate()
    assert make_config(rtc_max_delay=7).validate().rtc_max_delay == 7


def test_family_defaults_to_apt_round_trips_and_is_validated(tmp_path):
    config = make_config()
    data = config.to_dict()
    assert data["family"] == "apt" and data["family_config"] == {}
    del data["family"], data["family_config"]  # a bundle written before families: still APT
    assert PolicyConfig.from_dict(data).family == "apt"
    other = replace(config, family="action_prior", family_config={"history_steps": 4})
    assert PolicyConfig.from_json(other.to_json()).family_config == {"history_steps": 4}
    with pytest.raises(ConfigError, match="family='pi0'"):
        replace(config, family="pi0").validate()
    with pytest.raises(ConfigError, match="'apt' family takes none"):
        replace(config, family_config={"history_steps": 4}).validate()
