"""Launch files and parameter files: every launch argument goes somewhere real, every YAML key is a declared
parameter, setup.py installs them. launch/launch_ros are not installable here, so the launch files are read
as ASTs (their pure helpers are executed from the AST); the test that evaluates generate_launch_description()
runs only where launch_ros imports.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from apt_policy.ros import params

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


def pure_functions(path: Path, names: tuple[str, ...]) -> dict[str, object]:
    """Execute only the constants and the named functions of a launch file (no launch imports needed)."""
    tree = ast.parse(path.read_text())
    keep = [
        n
        for n in tree.body
        if (isinstance(n, ast.FunctionDef) and n.name in names)
        or (isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id.isupper())
        or (isinstance(n, ast.ImportFrom) and n.module == "__future__")
    ]
    namespace: dict[str, object] = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


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
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"
        for kw in n.keywords
        if kw.arg == "executable"
    }
    assert executables
    for exe in executables:
        assert f'"{exe} = apt_policy.' in setup_src, f"{path.name}: executable {exe!r} not in setup.py"


def test_node_overrides_are_typed_and_skip_empty_arguments():
    ns = pure_functions(ROOT / "launch" / "franka.launch.py", ("node_overrides",))
    overrides = ns["node_overrides"](
        {"model": " /opt/export ", "backend": "", "control_rate": "250", "cameras": "/a/image, /b/image,"}
    )
    assert overrides == {
        "model": "/opt/export",
        "control_rate": 250.0,
        "camera_topics": ["/a/image", "/b/image"],
    }
    assert isinstance(overrides["control_rate"], float)
    sim = pure_functions(ROOT / "launch" / "sim.launch.py", ("node_overrides",))
    assert sim["node_overrides"]({"instruction": "reach the red block", "control_rate": ""}) == {
        "instruction": "reach the red block"
    }


def test_realsense_serial_keeps_its_digits():
    ns = pure_functions(ROOT / "launch" / "franka.launch.py", ("realsense_arguments",))
    assert ns["realsense_arguments"]({"camera_serial": "012345678901", "color_profile": "1280x720x15"}) == {
        "serial_no": "_012345678901",
        "rgb_camera.color_profile": "1280x720x15",
    }
    assert ns["realsense_arguments"]({"camera_serial": "", "color_profile": ""}) == {}


def test_default_params_file_found_in_source_tree():
    ns = pure_functions(ROOT / "launch" / "franka.launch.py", ("default_params_file", "package_share"))
    ns["os"], ns["Path"] = __import__("os"), Path
    ns["__file__"] = str(ROOT / "launch" / "franka.launch.py")
    found = Path(ns["default_params_file"]("franka.yaml"))
    assert found.resolve() == (PKG / "config" / "franka.yaml").resolve()
    with pytest.raises(FileNotFoundError, match=r"nothing\.yaml"):
        ns["default_params_file"]("nothing.yaml")


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
