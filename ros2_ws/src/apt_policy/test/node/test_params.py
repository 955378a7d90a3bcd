"""Node parameter validation: every rule names the parameter; the YAML configs cover every parameter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from apt_policy.ros.params import INTERFACE_SPECS, NODE_SPECS, SIMULATION_ONLY, ParameterError, validate

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def _values(tmp_path: Path, **changes):
    values = {s.name: s.default for s in NODE_SPECS}
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
    data = yaml.safe_load((CONFIG_DIR / name).read_text())
    params = _flatten(data["apt_policy"]["ros__parameters"])
    # Undotted names are the node's own; dotted ones (gripper.*, realsense.*) belong to attached interfaces.
    unknown = {k for k in params if "." not in k} - {s.name for s in NODE_SPECS}
    assert not unknown, f"{name} sets undeclared parameters {unknown}"
    unknown = {k for k in params if "." in k} - {s.name for s in INTERFACE_SPECS}
    assert not unknown, f"{name} sets undeclared interface parameters {unknown}"
    params = {k: v for k, v in params.items() if "." not in k}
    values = {s.name: s.default for s in NODE_SPECS}
    values.update(params)
    values["model"] = str(tmp_path)
    validate(values)
    if name == "franka.yaml":  # the real setup documents every parameter but the simulation-only ones
        assert set(params) == {s.name for s in NODE_SPECS} - set(SIMULATION_ONLY)
        assert not set(params) & set(SIMULATION_ONLY)


REPO = Path(__file__).resolve().parents[5]


def test_parameter_doc_is_generated_from_the_declarations() -> None:
    from apt_policy.ros.params import markdown

    doc = (REPO / "docs" / "PARAMETERS.md").read_text()
    assert doc == markdown(), (
        "docs/PARAMETERS.md is stale: python -m apt_policy.ros.params > docs/PARAMETERS.md"
    )


def test_every_parameter_is_a_typed_config_field() -> None:
    import dataclasses

    from apt_policy.ros.params import InterfaceParams, NodeParams

    assert [f.name for f in dataclasses.fields(NodeParams)] == [s.attr for s in NODE_SPECS]
    assert [f.name for f in dataclasses.fields(InterfaceParams)] == [s.attr for s in INTERFACE_SPECS]
    assert all(s.name.replace(".", "_") == s.attr for s in (*NODE_SPECS, *INTERFACE_SPECS))
    # the documented defaults are the ones the node runs with (NODE.md once said 0.3 / 0.3)
    by_name = {s.name: s for s in NODE_SPECS}
    assert by_name["max_deviation"].default == NodeParams.max_deviation == 0.25
    assert "`max_deviation` | float | `0.25`" in (REPO / "docs" / "PARAMETERS.md").read_text()


def test_safety_limits_are_only_tightened_while_moving(tmp_path: Path) -> None:
    from apt_policy.ros.params import check_update

    p = validate(_values(tmp_path))
    assert check_update(p, {"velocity_scale": 0.3}, moving=True).velocity_scale == 0.3
    assert check_update(p, {"position_margin": 0.1}, moving=True).position_margin == 0.1
    with pytest.raises(ParameterError, match=r"'velocity_scale' = 0\.8 would loosen a safety limit"):
        check_update(p, {"velocity_scale": 0.8}, moving=True)
    with pytest.raises(ParameterError, match=r"'position_margin' = 0\.01 would loosen"):
        check_update(p, {"position_margin": 0.01}, moving=True)
    assert check_update(p, {"velocity_scale": 0.8}, moving=False).velocity_scale == 0.8


def test_run_time_changes_are_validated_as_a_whole(tmp_path: Path) -> None:
    from apt_policy.ros.params import check_update

    p = validate(_values(tmp_path))
    assert check_update(p, {"blending": "ensemble", "blending_steps": 5}, moving=True).blending == "ensemble"
    with pytest.raises(ParameterError, match="'model' is read-only at run time"):
        check_update(p, {"model": str(tmp_path)}, moving=False)
    with pytest.raises(ParameterError, match="'blending' is 'jerky'; choose one of"):
        check_update(p, {"blending": "jerky"}, moving=False)
    with pytest.raises(ParameterError, match=r"'max_tracking_error'.*stalled arm faults"):
        check_update(p, {"max_deviation": 0.1}, moving=True)  # tighter, but below the tracking bound
    with pytest.raises(ParameterError, match=r"'gripper\.speed' is not a run-time parameter"):
        check_update(p, {"gripper.speed": 0.05}, moving=False)


def test_chunk_execution_resolves_against_the_model_and_latency_is_validated() -> None:
    """auto / rtc become real-time chunking only for a model with RTC inputs; otherwise `blending`."""
    from types import SimpleNamespace

    from apt_policy.core.config import ActionSemantics
    from apt_policy.robots.franka import FR3
    from apt_policy.ros.control_setup import build_controller
    from apt_policy.ros.params import defaults

    names = (*FR3.joint_names, "gripper")
    base = dict(action_names=names, horizon=16, dt=0.1, action_dim=8, action_semantics=ActionSemantics())
    plain = SimpleNamespace(**base, rtc_inputs=False, rtc_max_delay=0)
    rtc = SimpleNamespace(**base, rtc_inputs=True, rtc_max_delay=6)
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
