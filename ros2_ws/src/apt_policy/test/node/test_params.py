"""Node parameter validation: every rule names the parameter; the YAML configs cover every parameter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from apt_policy.ros.params import SIMULATION_ONLY, SPECS, ParameterError, validate

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def _values(tmp_path: Path, **changes):
    values = {s.name: s.default for s in SPECS}
    values["model"] = str(tmp_path)
    values.update(changes)
    return values


def test_defaults_with_a_model_are_valid(tmp_path: Path) -> None:
    p = validate(_values(tmp_path))
    assert p.output_mode == "joint_trajectory" and p.period_s == pytest.approx(0.01)
    assert p.camera_names == () and p.camera_topics == ("/camera/camera/color/image_raw",)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model": ""}, "'model' is empty"),
        ({"model": "/does/not/exist"}, "'model': directory"),
        ({"control_rate": 5000.0}, r"'control_rate' = 5000.0 is outside \[10.0, 1000.0\]"),
        ({"control_rate": "fast"}, "'control_rate' must be float"),
        ({"output_mode": "velocity"}, "'output_mode' is 'velocity'; choose one of"),
        ({"robot": "ur5"}, "'robot'"),
        ({"camera_names": ["a", "b"]}, "same length"),
        ({"camera_topics": ["/a", "/a"]}, "'camera_topics' has duplicates"),
        ({"camera_topics": [""]}, "'camera_topics' is empty"),
        ({"lookahead_points": 0}, "'lookahead_points'"),
        ({"velocity_scale": 1.5}, "'velocity_scale'"),
        ({"max_skew": 30.0, "max_image_age": 0.1, "max_state_age": 0.1}, "'max_skew'"),
        ({"lookahead_points": True}, "'lookahead_points' must be int"),
        ({"max_tracking_error": 0.25, "max_deviation": 0.25}, "'max_tracking_error'.*stalled arm faults"),
        ({"ensemble_m": float("nan")}, "'ensemble_m' must be finite"),
        ({"publish_lead": 1.0}, r"'publish_lead' = 1.0 is outside \[0.0, 0.9\]"),
        ({"inference_process": 1}, "'inference_process' must be bool"),
    ],
)
def test_invalid_values_name_the_parameter(tmp_path: Path, changes, match) -> None:
    with pytest.raises(ParameterError, match=match):
        validate(_values(tmp_path, **changes))


def test_int_accepted_for_float_parameter(tmp_path: Path) -> None:
    assert validate(_values(tmp_path, control_rate=200)).control_rate == 200.0


def _flatten(tree: dict, prefix: str = "") -> dict:
    """Nested YAML mappings are dotted parameter names in ROS 2 (gripper: {output: x} -> gripper.output)."""
    flat: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize("name", ["franka.yaml", "sim.yaml"])
def test_config_files_set_only_known_parameters_and_validate(tmp_path: Path, name: str) -> None:
    from apt_policy.ros.interfaces import SPECS as INTERFACE_SPECS

    data = yaml.safe_load((CONFIG_DIR / name).read_text())
    params = _flatten(data["apt_policy"]["ros__parameters"])
    # Undotted names are the node's own; dotted ones (gripper.*, realsense.*) belong to attached interfaces.
    unknown = {k for k in params if "." not in k} - {s.name for s in SPECS}
    assert not unknown, f"{name} sets undeclared parameters {unknown}"
    unknown = {k for k in params if "." in k} - {s.name for s in INTERFACE_SPECS}
    assert not unknown, f"{name} sets undeclared interface parameters {unknown}"
    params = {k: v for k, v in params.items() if "." not in k}
    values = {s.name: s.default for s in SPECS}
    values.update(params)
    values["model"] = str(tmp_path)
    validate(values)
    if name == "franka.yaml":  # the real setup documents every parameter but the simulation-only ones
        assert set(params) == {s.name for s in SPECS} - set(SIMULATION_ONLY)
        assert not set(params) & set(SIMULATION_ONLY)


def test_chunk_execution_resolves_against_the_model_and_latency_is_validated() -> None:
    """auto / rtc become real-time chunking only for a model with RTC inputs; otherwise `blending`."""
    from types import SimpleNamespace

    from apt_policy.core.config import ActionSemantics
    from apt_policy.robots.franka import FR3
    from apt_policy.ros.control_setup import build_controller
    from apt_policy.ros.params import defaults

    names = (*FR3.joint_names, "gripper")
    base = dict(action_names=names, horizon=16, dt=0.1, action_dim=8, action_semantics=ActionSemantics())
    plain, rtc = SimpleNamespace(**base), SimpleNamespace(**base, rtc_inputs=True, rtc_max_delay=6)
    for strategy in ("auto", "rtc"):
        ctrl, _ = build_controller(defaults(chunk_execution=strategy), plain)
        assert not ctrl.config.chunking.rtc and ctrl.config.blend.mode == "crossfade"
        ctrl, _ = build_controller(defaults(chunk_execution=strategy), rtc)
        assert ctrl.config.chunking.rtc and ctrl.config.chunking.trained_max_delay == 6
    ctrl, _ = build_controller(defaults(chunk_execution="ensemble"), rtc)
    assert not ctrl.config.chunking.rtc and ctrl.config.blend.mode == "ensemble"
    assert defaults(simulated_latency="fixed:120").simulated_latency == "fixed:120"
    with pytest.raises(ParameterError, match="simulated_latency"):
        defaults(simulated_latency="jetson")
