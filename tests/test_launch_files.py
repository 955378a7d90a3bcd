"""Launch files and parameter files: every launch argument goes somewhere real, every YAML key is a declared
parameter, setup.py installs them. launch/launch_ros are not installable here, so the launch files are read
as ASTs, what they decide is in apt_policy.ros.launch_args (imported here), and their ``_launch_setup`` runs
against stand-ins of the launch classes that record what would be launched; the test that evaluates
generate_launch_description() with the real classes runs only where launch_ros imports.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from apt_policy.ros import launch_args, params

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ros2_ws" / "src" / "apt_policy"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
PARAM_FILES = sorted((PKG / "config").glob("*.yaml")) + sorted((ROOT / "launch").glob("*.yaml"))

NODE_PARAMETERS = {s.name for s in params.SPECS}  # the node's and its interfaces'
# Arguments of the included launch files, from their upstream sources (see
# /work/shared/reference/robot_side.md): franka_bringup/launch/franka.launch.py (franka_ros2 v2/v3) and
# realsense2_camera/launch/rs_launch.py (realsense-ros 4.5x).
FRANKA_BRINGUP_ARGS = {
    "robot_ip",
    "use_fake_hardware",
    "load_gripper",
    "robot_type",
    "arm_id",
    "fake_sensor_commands",
    "use_rviz",
    "namespace",
}
REALSENSE_ARGS = {
    "serial_no",
    "camera_name",
    "camera_namespace",
    "rgb_camera.color_profile",
    "depth_module.depth_profile",
    "align_depth.enable",
    "enable_depth",
    "enable_color",
}
MAPS = {
    "NODE_PARAMETERS": NODE_PARAMETERS,
    "FRANKA_BRINGUP_ARGUMENTS": FRANKA_BRINGUP_ARGS,
    "REALSENSE_ARGUMENTS": REALSENSE_ARGS,
}


def module_constants(path: Path) -> dict[str, object]:
    """Top-level ``NAME = <literal>`` assignments of a launch file."""
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def test_there_are_launch_and_param_files():
    assert {p.name for p in LAUNCH_FILES} >= {"franka.launch.py", "sim.launch.py"}
    assert {p.name for p in PARAM_FILES} >= {"franka.yaml", "sim.yaml"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_launch_argument_maps_to_a_parameter_or_included_argument(path: Path):
    consts = module_constants(path)
    arguments = consts["ARGUMENTS"]
    assert isinstance(arguments, dict) and arguments
    mapped: set[str] = set(consts.get("OWN_ARGUMENTS", ()))
    for map_name, targets in MAPS.items():
        mapping = consts.get(map_name, {})
        for arg, target in mapping.items():
            assert arg in arguments, f"{path.name}: {map_name} maps undeclared argument {arg!r}"
            assert target in targets, f"{path.name}: {arg!r} -> {target!r} is not a known {map_name} target"
            mapped.add(arg)
    unmapped = set(arguments) - mapped
    assert not unmapped, f"{path.name}: launch arguments going nowhere: {sorted(unmapped)}"
    for name, (default, description) in arguments.items():
        assert isinstance(default, str) and description.strip(), f"{path.name}: argument {name!r}"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_declares_only_the_table_and_uses_own_switches(path: Path):
    source = path.read_text()
    tree = ast.parse(source)
    consts = module_constants(path)
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"
    ]
    assert len(calls) == 1, "arguments are declared from the ARGUMENTS table only"
    used = {
        n.slice.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant)
    }
    for own in consts.get("OWN_ARGUMENTS", ()):
        assert own in used, f"{path.name}: switch {own!r} is declared but never read"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_executables_are_console_scripts(path: Path):
    setup_src = (PKG / "setup.py").read_text()
    executables = {
        kw.value.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") in ("Node", "LifecycleNode")
        for kw in n.keywords
        if kw.arg == "executable"
    }
    assert executables
    for exe in executables:
        assert f'"{exe} = apt_policy.' in setup_src, f"{path.name}: executable {exe!r} not in setup.py"


def test_node_overrides_are_typed_and_skip_empty_arguments():
    franka = module_constants(ROOT / "launch" / "franka.launch.py")["NODE_PARAMETERS"]
    overrides = launch_args.node_overrides(
        {"model": " /opt/export ", "backend": "", "control_rate": "250", "cameras": "/a/image, /b/image,"},
        franka,
    )
    assert overrides == {
        "model": "/opt/export",
        "control_rate": 250.0,
        "camera_topics": ["/a/image", "/b/image"],
    }
    assert isinstance(overrides["control_rate"], float)
    sim = module_constants(ROOT / "launch" / "sim.launch.py")["NODE_PARAMETERS"]
    assert launch_args.node_overrides({"instruction": "reach the red block", "control_rate": ""}, sim) == {
        "instruction": "reach the red block"
    }


@pytest.mark.parametrize("text", ["fast", "nan", "-5", "0"])
def test_a_rate_that_is_not_a_rate_names_the_argument(text: str):
    """Issue #23: ``control_rate:=fast`` failed with "could not convert string to float: 'fast'"."""
    with pytest.raises(launch_args.LaunchArgumentError, match=r"launch argument 'control_rate'"):
        launch_args.node_overrides({"control_rate": text}, {"control_rate": "control_rate"})


def test_booleans_are_checked_not_read_as_false():
    """Issue #23: ``start_realsense:=maybe`` was silently false."""
    for word in ("true", "True", "1", "yes", "on"):
        assert launch_args.parse_bool("start_realsense", word) is True
    for word in ("false", "FALSE", "0", "no", "off"):
        assert launch_args.parse_bool("start_realsense", word) is False
    for word in ("maybe", "", "2", "truee"):
        with pytest.raises(launch_args.LaunchArgumentError, match=r"'start_realsense'.*true or false"):
            launch_args.parse_bool("start_realsense", word)


def test_realsense_serial_keeps_its_digits():
    mapping = module_constants(ROOT / "launch" / "franka.launch.py")["REALSENSE_ARGUMENTS"]
    args = launch_args.realsense_arguments(
        {"camera_serial": "012345678901", "color_profile": "1280x720x15"}, mapping
    )
    assert args == {"serial_no": "_012345678901", "rgb_camera.color_profile": "1280x720x15"}
    assert launch_args.realsense_arguments({"camera_serial": "", "color_profile": ""}, mapping) == {}


def test_franka_bringup_gets_robot_type_and_real_hardware_needs_an_ip():
    """Issue #23: robot_type was not forwarded (franka_ros2 1.x builds robots/<robot_type>/... from it) and an
    empty robot_ip went to real hardware unchecked."""
    consts = module_constants(ROOT / "launch" / "franka.launch.py")
    mapping = consts["FRANKA_BRINGUP_ARGUMENTS"]
    defaults = {name: default for name, (default, _) in consts["ARGUMENTS"].items()}
    args = launch_args.franka_bringup_arguments({**defaults, "robot_ip": "172.16.0.2"}, mapping)
    assert args == {
        "robot_ip": "172.16.0.2",
        "robot_type": "fr3",
        "arm_id": "fr3",
        "use_fake_hardware": "false",
        "load_gripper": "true",
    }
    fake = launch_args.franka_bringup_arguments({**defaults, "use_fake_hardware": "True"}, mapping)
    assert fake["use_fake_hardware"] == "true" and fake["robot_ip"] == ""
    with pytest.raises(launch_args.LaunchArgumentError, match=r"'robot_ip': required with real hardware"):
        launch_args.franka_bringup_arguments(defaults, mapping)
    with pytest.raises(launch_args.LaunchArgumentError, match=r"'load_gripper'"):
        launch_args.franka_bringup_arguments(
            {**defaults, "robot_ip": "10.0.0.2", "load_gripper": "y"}, mapping
        )


def test_default_params_file_found_in_source_tree():
    launch_file = str(ROOT / "launch" / "franka.launch.py")
    found = Path(launch_args.default_params_file("franka.yaml", launch_file))
    assert found.resolve() == (PKG / "config" / "franka.yaml").resolve()
    with pytest.raises(FileNotFoundError, match=r"nothing\.yaml"):
        launch_args.default_params_file("nothing.yaml", launch_file)


def test_a_named_params_file_must_be_readable(tmp_path: Path):
    """Issue #23: launch_ros only warns about a missing parameter file and the node ran on its defaults."""
    launch_file = str(ROOT / "launch" / "sim.launch.py")
    assert Path(launch_args.params_file("", "sim.yaml", launch_file)).name == "sim.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text("apt_policy:\n  ros__parameters: {}\n")
    assert launch_args.params_file(f" {mine} ", "sim.yaml", launch_file) == str(mine)
    with pytest.raises(
        launch_args.LaunchArgumentError, match=r"'params_file': .*missing\.yaml does not exist"
    ):
        launch_args.params_file(str(tmp_path / "missing.yaml"), "sim.yaml", launch_file)
    with pytest.raises(launch_args.LaunchArgumentError, match=r"'params_file': .* is not a file"):
        launch_args.params_file(str(tmp_path), "sim.yaml", launch_file)


def test_policy_exit_ends_the_launch_and_a_failure_is_not_success():
    assert not launch_args.policy_exit_failed(0)
    for code in (1, 2, -2, -9, None):
        assert launch_args.policy_exit_failed(code)
    assert "exit code 2" in launch_args.policy_exit_message(2)
    assert "signal 9" in launch_args.policy_exit_message(-9)


def _flatten(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(_flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: p.name)
def test_param_file_keys_are_declared_parameters(path: Path):
    data = yaml.safe_load(path.read_text())
    assert "apt_policy" in data, f"{path.name}: parameters must be under the node name apt_policy"
    keys = _flatten("", data["apt_policy"]["ros__parameters"])
    unknown = sorted(set(keys) - NODE_PARAMETERS)
    assert not unknown, f"{path.name}: keys that no node parameter declares: {unknown}"


def test_setup_installs_launch_and_config_files():
    script = (
        "import json, runpy, setuptools\n"
        "captured = {}\n"
        "setuptools.setup = lambda **kw: captured.update(kw)\n"
        "runpy.run_path('setup.py', run_name='__main__')\n"
        "print(json.dumps(captured['data_files']))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=PKG, capture_output=True, text=True, check=True)
    data_files = dict((dest, files) for dest, files in json.loads(out.stdout.strip().splitlines()[-1]))
    launch = data_files["share/apt_policy/launch"]
    config = data_files["share/apt_policy/config"]
    for p in LAUNCH_FILES:
        assert f"launch/{p.name}" in launch
    for name in ("franka.yaml", "sim.yaml"):
        assert f"config/{name}" in config
    for files in data_files.values():
        for f in files:
            assert (PKG / f).is_file(), f"data file {f} does not exist"


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_generate_launch_description(path: Path):
    """Evaluates the description; needs launch and launch_ros (a ROS 2 install), skipped otherwise."""
    pytest.importorskip(
        "launch_ros", reason="launch_ros is not installable from pip: test runs on a ROS 2 install"
    )
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    declared = {a.name for a in description.get_launch_arguments()}
    assert declared == set(module.ARGUMENTS)


class _Recorded:
    """Stand-in for a launch action: records its arguments."""

    made: ClassVar[list[_Recorded]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs = args, kwargs
        _Recorded.made.append(self)


class _LaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context: dict[str, str]) -> str:
        return context[self.name]


def _stand_in_modules() -> dict[str, types.ModuleType]:
    names = {
        "launch": ["LaunchDescription"],
        "launch.actions": [
            "DeclareLaunchArgument",
            "IncludeLaunchDescription",
            "LogInfo",
            "OpaqueFunction",
            "RegisterEventHandler",
            "Shutdown",
        ],
        "launch.event_handlers": ["OnProcessExit"],
        "launch.launch_description_sources": ["PythonLaunchDescriptionSource"],
        "launch.substitutions": [],
        "launch_ros": [],
        "launch_ros.actions": ["Node", "LifecycleNode"],
    }
    modules = {}
    for module, classes in names.items():
        mod = types.ModuleType(module)
        for cls in classes:
            setattr(mod, cls, type(cls, (_Recorded,), {}))
        modules[module] = mod
    modules["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration  # type: ignore[attr-defined]
    return modules


@pytest.fixture
def load_launch_file(monkeypatch: pytest.MonkeyPatch):
    """Import a launch file against stand-ins of launch / launch_ros; returns (module, recorded actions)."""
    for name, module in _stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    _Recorded.made = []

    def load(name: str) -> types.ModuleType:
        path = ROOT / "launch" / name
        spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_") + "_stub", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def _context(module: types.ModuleType, **values: str) -> dict[str, str]:
    context = {name: default for name, (default, _) in module.ARGUMENTS.items()}
    context.update(values)
    return context


def _made(kind: str) -> list[_Recorded]:
    return [a for a in _Recorded.made if type(a).__name__ == kind]


@pytest.mark.parametrize("name", ["sim.launch.py", "franka.launch.py"])
def test_a_missing_params_file_stops_the_launch_before_any_node(load_launch_file, name: str, tmp_path: Path):
    module = load_launch_file(name)
    values = {"params_file": str(tmp_path / "nope.yaml"), "start_franka_bringup": "false"}
    with pytest.raises(launch_args.LaunchArgumentError, match=r"'params_file'.*does not exist"):
        module._launch_setup(_context(module, **values))
    assert not _made("Node") and not _made("LifecycleNode") and not _made("IncludeLaunchDescription")


@pytest.mark.parametrize("name", ["sim.launch.py", "franka.launch.py"])
def test_the_policy_node_exit_ends_the_launch_non_zero_on_failure(load_launch_file, name: str):
    module = load_launch_file(name)
    actions = module._launch_setup(_context(module, start_franka_bringup="false", start_realsense="false"))
    policy = [a for a in actions if a.kwargs.get("executable") == "policy_node"]
    assert len(policy) == 1 and policy[0].kwargs["name"] == "apt_policy"
    handlers = [h for h in _made("OnProcessExit") if h.kwargs["target_action"] is policy[0]]
    assert len(handlers) == 1
    assert any(r.args and r.args[0] is handlers[0] for r in _made("RegisterEventHandler") if r in actions)
    on_exit = handlers[0].kwargs["on_exit"]
    ok = on_exit(types.SimpleNamespace(returncode=0), None)
    assert [type(a).__name__ for a in ok] == ["LogInfo", "Shutdown"]
    failed = on_exit(types.SimpleNamespace(returncode=2), None)
    assert [type(a).__name__ for a in failed] == ["OpaqueFunction"]
    with pytest.raises(RuntimeError, match=r"apt_policy failed \(exit code 2\)"):
        failed[0].kwargs["function"](None, *failed[0].kwargs["args"])


def test_franka_launch_forwards_robot_type_and_refuses_real_hardware_without_ip(
    load_launch_file, monkeypatch
):
    module = load_launch_file("franka.launch.py")
    monkeypatch.setattr(module, "package_share", lambda package: f"/opt/ros/share/{package}")
    with pytest.raises(launch_args.LaunchArgumentError, match=r"'robot_ip'"):
        module._launch_setup(_context(module, start_realsense="false"))
    assert not _made("Node") and not _made("IncludeLaunchDescription")
    with pytest.raises(launch_args.LaunchArgumentError, match=r"'start_realsense'"):
        module._launch_setup(_context(module, robot_ip="172.16.0.2", start_realsense="maybe"))
    module._launch_setup(_context(module, robot_ip="172.16.0.2", robot_type="fer", start_realsense="false"))
    (include,) = _made("IncludeLaunchDescription")
    forwarded = dict(include.kwargs["launch_arguments"])
    assert forwarded["robot_type"] == "fer" and forwarded["arm_id"] == "fer"
    assert forwarded["robot_ip"] == "172.16.0.2" and forwarded["use_fake_hardware"] == "false"
