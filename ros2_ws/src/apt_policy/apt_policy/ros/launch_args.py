"""What the launch files decide, as plain functions: argument parsing and checks, parameter files, the
arguments forwarded to franka_bringup and realsense2_camera, what a policy node exit means.

``launch`` and ``launch_ros`` are not installable from pip, so the launch files (``launch/*.launch.py``) keep
to building actions and everything they decide lives here, imported and tested without them. A bad
argument raises :class:`LaunchArgumentError` naming the argument; raised in a launch file's
``OpaqueFunction`` it stops ``ros2 launch`` with that message (launch logs "Caught exception in launch: ..."
and exits 1) before any process starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

PACKAGE = "apt_policy"
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


class LaunchArgumentError(ValueError):
    """A launch argument that cannot be used; the message names it."""


def parse_bool(name: str, text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off, any case); anything else is an error, not false."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise LaunchArgumentError(f"launch argument '{name}': expected true or false, got {text!r}")


def parse_rate(name: str, text: str) -> float:
    """A rate in Hz: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise LaunchArgumentError(f"launch argument '{name}': expected a rate in Hz, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise LaunchArgumentError(f"launch argument '{name}': expected a rate in Hz > 0, got {text!r}")
    return value


def node_overrides(values: Mapping[str, str], mapping: Mapping[str, str]) -> dict[str, object]:
    """Typed node parameter overrides (``mapping``: launch argument -> node parameter) from the non-empty
    arguments in ``values``."""
    out: dict[str, object] = {}
    for arg, param in mapping.items():
        text = values.get(arg, "").strip()
        if not text:
            continue
        if param == "control_rate":
            out[param] = parse_rate(arg, text)
        elif param == "camera_topics":
            out[param] = [t.strip() for t in text.split(",") if t.strip()]
        elif param == "autostart":
            out[param] = parse_bool(arg, text)
        else:
            out[param] = text
    return out


def package_share(package: str) -> str | None:
    """The package's share directory from the ament index, or None when it is not installed."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return str(get_package_share_directory(package))
    except (PackageNotFoundError, OSError, ValueError):  # OSError/ValueError: no usable AMENT_PREFIX_PATH
        return None


def default_params_file(name: str, launch_file: str) -> str:
    """config/<name> of the installed apt_policy, else of the source tree ``launch_file`` lives in."""
    share = package_share(PACKAGE)
    candidates = [Path(share) / "config" / name] if share else []
    here = Path(os.path.abspath(launch_file)).parent
    candidates += [here.parent / "config" / name, here.parent / "ros2_ws" / "src" / PACKAGE / "config" / name]
    for path in candidates:
        if path.is_file():
            return str(path)
    raise FileNotFoundError(f"{name} not found in {[str(c) for c in candidates]}")


def params_file(text: str, default_name: str, launch_file: str) -> str:
    """The node's parameter file: ``text`` when given, else the package's ``default_name``.

    A named file that cannot be read is an error: launch_ros would only warn ("Parameter file path is not a
    file") and start the node on its built-in defaults, which for a node driving an arm is not a choice to
    make silently.
    """
    name = text.strip()
    if not name:
        return default_params_file(default_name, launch_file)
    path = Path(name).expanduser()
    if not path.is_file():
        why = "does not exist" if not path.exists() else "is not a file"
        raise LaunchArgumentError(f"launch argument 'params_file': {name} {why}")
    try:
        path.read_bytes()
    except OSError as exc:
        raise LaunchArgumentError(f"launch argument 'params_file': cannot read {name}: {exc}") from None
    return str(path)


def franka_bringup_arguments(values: Mapping[str, str], mapping: Mapping[str, str]) -> dict[str, str]:
    """franka_bringup's franka.launch.py arguments (``mapping``: launch argument -> bringup argument), the
    booleans checked; ``robot_type`` also as ``arm_id`` (its name before franka_ros2 1.x). Real hardware
    without ``robot_ip`` is refused."""
    out: dict[str, str] = {}
    for arg, target in mapping.items():
        text = values.get(arg, "").strip()
        if arg in ("use_fake_hardware", "load_gripper"):
            text = "true" if parse_bool(arg, text) else "false"
        out[target] = text
    if "robot_type" in out:
        if not out["robot_type"]:
            raise LaunchArgumentError("launch argument 'robot_type': empty (fr3, fer, fp3, ...)")
        out["arm_id"] = out["robot_type"]
    if out.get("use_fake_hardware") == "false" and not out.get("robot_ip"):
        raise LaunchArgumentError(
            "launch argument 'robot_ip': required with real hardware (use_fake_hardware:=false); give the "
            "arm's control IP, or use_fake_hardware:=true, or start_franka_bringup:=false when the arm is "
            "started elsewhere"
        )
    return out


def realsense_arguments(values: Mapping[str, str], mapping: Mapping[str, str]) -> dict[str, str]:
    """rs_launch.py arguments from the non-empty launch arguments; a digits-only serial gets realsense-ros'
    ``_`` prefix, or launch would turn it into an integer (and drop leading zeros)."""
    out = {}
    for arg, rs_arg in mapping.items():
        text = values.get(arg, "").strip()
        if not text:
            continue
        if rs_arg == "serial_no" and text.isdigit():
            text = "_" + text
        out[rs_arg] = text
    return out


def policy_exit_message(returncode: int | None, name: str = PACKAGE) -> str:
    """Why the launch ends when the policy node's process exits (it is the reason for the launch)."""
    if returncode == 0:
        return f"{name} exited: shutting down the launch"
    if returncode is not None and returncode < 0:
        return f"{name} was killed by signal {-returncode}: shutting down the launch"
    return f"{name} failed (exit code {returncode}): shutting down the launch"


def policy_exit_failed(returncode: int | None) -> bool:
    """Whether the launch should end with a non-zero status for this exit of the policy node."""
    return returncode != 0
