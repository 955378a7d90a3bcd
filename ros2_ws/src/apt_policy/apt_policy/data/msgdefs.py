"""ROS 2 message definitions as rosbag2 stores them (``ros2msg`` schemas), read from ``.msg`` files.

rosbag2 writes, for each topic type, the type's own ``.msg`` text followed by the text of every type it uses,
each after a line of 80 ``=`` and a ``MSG: pkg/Type`` line. Readers (rosbags, Foxglove, mcap-ros2-support)
decode CDR from that text alone, so a recording is self-describing.

The ``.msg`` files are found where ROS installs them: ``<prefix>/share/<pkg>/msg/<Type>.msg`` for every
prefix in ``AMENT_PREFIX_PATH`` and this interpreter's ``sys.prefix`` (the pip ROS wheels), then the source
tree's ``ros2_ws/src/<pkg>`` (apt_msgs before it is built). No rclpy needed.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

__all__ = ["MessageDefinitionError", "message_definition", "search_roots", "split_type"]

PRIMITIVES = frozenset(
    [
        "bool",
        "byte",
        "char",
        "float32",
        "float64",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "string",
        "wstring",
    ]
)
SEPARATOR = "=" * 80
_SOURCE_TREE = Path(__file__).resolve().parents[3]  # ros2_ws/src


class MessageDefinitionError(LookupError):
    """A type whose ``.msg`` file cannot be found (names the places searched)."""


def split_type(type_name: str) -> tuple[str, str]:
    """``pkg/msg/Type`` or ``pkg/Type`` -> (pkg, Type)."""
    parts = type_name.strip().split("/")
    if len(parts) == 3 and parts[1] == "msg":
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise MessageDefinitionError(f"not a message type name: {type_name!r} (expected pkg/msg/Type)")


def search_roots(extra: Iterable[Path] = ()) -> tuple[Path, ...]:
    """Directories holding ``<pkg>/msg/<Type>.msg``, most specific first."""
    roots = [Path(p) for p in extra]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            roots.append(Path(prefix) / "share")
    roots += [Path(sys.prefix) / "share", _SOURCE_TREE]
    return tuple(dict.fromkeys(roots))


def _find(pkg: str, name: str, roots: tuple[Path, ...]) -> str:
    for root in roots:
        path = root / pkg / "msg" / f"{name}.msg"
        if path.is_file():
            return path.read_text()
    where = ", ".join(str(r) for r in roots)
    raise MessageDefinitionError(f"{pkg}/msg/{name}.msg not found under {where}")


_FIELD = re.compile(r"^\s*([A-Za-z_][\w/]*)(\[[^\]]*\])?\s+([A-Za-z_]\w*)(.*)$")


def _dependencies(text: str, pkg: str) -> list[tuple[str, str]]:
    """The non-primitive field types of a .msg text, as (pkg, Type), in order of first use."""
    deps: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = _FIELD.match(line)
        if not match:
            continue
        base = match.group(1)
        if "=" in match.group(4) and match.group(2) is None and base in PRIMITIVES:
            continue  # a constant
        base = base.split("<=")[0]
        if base in PRIMITIVES:
            continue
        dep = split_type(base) if "/" in base else (pkg, base)
        if base == "Header" and "/" not in match.group(1):
            dep = ("std_msgs", "Header")
        if dep not in deps:
            deps.append(dep)
    return deps


@lru_cache(maxsize=256)
def _definition(type_name: str, roots: tuple[Path, ...]) -> str:
    pkg, name = split_type(type_name)
    top = _find(pkg, name, roots)
    parts = [top.rstrip("\n")]
    seen = {(pkg, name)}
    queue = _dependencies(top, pkg)
    while queue:
        dep = queue.pop(0)
        if dep in seen:
            continue
        seen.add(dep)
        text = _find(*dep, roots)
        parts.append(f"{SEPARATOR}\nMSG: {dep[0]}/{dep[1]}\n{text.rstrip(chr(10))}")
        queue += [d for d in _dependencies(text, dep[0]) if d not in seen]
    return "\n".join(parts) + "\n"


def message_definition(type_name: str, extra_roots: Iterable[Path] = ()) -> str:
    """The rosbag2 ``ros2msg`` schema text of ``type_name`` (e.g. ``sensor_msgs/msg/JointState``)."""
    return _definition(type_name, search_roots(extra_roots))
