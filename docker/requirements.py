"""Print apt_policy's declared Python requirements, read from its setup.py, for `pip install -r`.

The images install exactly what ros2_ws/src/apt_policy/setup.py declares (install_requires plus the
chosen extras), so the Dockerfiles never keep a second list that could drift. setup.py is parsed with
`ast`, never executed or imported: this runs in a bare build stage with only the Python standard library.

    python3 docker/requirements.py --setup ros2_ws/src/apt_policy/setup.py --extras ort --drop onnxruntime

`--drop NAME` leaves a requirement out because the image installs a platform build of it separately
(NVIDIA's onnxruntime-gpu replaces `onnxruntime` from the `ort` extra on Jetson and x86 GPU hosts).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(requirement: str) -> str:
    """The normalised project name of a requirement string (PEP 503: lower case, runs of -_. -> -)."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _setup_call(tree: ast.Module) -> ast.Call:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "setup":
            return node
    raise ValueError("no setup(...) call found")


def _literal(node: ast.AST, names: dict[str, ast.AST]) -> object:
    """A literal value, following module-level names (e.g. ``"ros": ROS_WHEELS``)."""
    if isinstance(node, ast.Name) and node.id in names:
        return _literal(names[node.id], names)
    if isinstance(node, ast.Dict):
        return {_literal(k, names): _literal(v, names) for k, v in zip(node.keys, node.values, strict=True)}
    return ast.literal_eval(node)


def declared_requirements(setup_py: str | Path) -> tuple[list[str], dict[str, list[str]]]:
    """(install_requires, extras_require) of a setup.py, read without running it."""
    tree = ast.parse(Path(setup_py).read_text(), filename=str(setup_py))
    names = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    keywords = {kw.arg: kw.value for kw in _setup_call(tree).keywords if kw.arg}
    install = _literal(keywords["install_requires"], names) if "install_requires" in keywords else []
    extras = _literal(keywords["extras_require"], names) if "extras_require" in keywords else {}
    return list(install), {key: list(value) for key, value in extras.items()}


def select(setup_py: str | Path, extras: list[str], drop: list[str]) -> list[str]:
    """install_requires + the named extras, minus the dropped project names, in declaration order."""
    install, declared = declared_requirements(setup_py)
    unknown = [extra for extra in extras if extra not in declared]
    if unknown:
        raise ValueError(f"unknown extras {unknown}; {setup_py} declares {sorted(declared)}")
    dropped = {requirement_name(name) for name in drop}
    chosen = install + [req for extra in extras for req in declared[extra]]
    missing = dropped - {requirement_name(req) for req in chosen}
    if missing:
        raise ValueError(f"--drop {sorted(missing)}: not among the selected requirements")
    return [req for req in chosen if requirement_name(req) not in dropped]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", default="ros2_ws/src/apt_policy/setup.py", help="path of setup.py")
    parser.add_argument("--extras", default="", help="comma-separated extras to include, e.g. ort")
    parser.add_argument("--drop", action="append", default=[], help="project name to leave out (repeatable)")
    args = parser.parse_args(argv)
    extras = [extra for extra in args.extras.split(",") if extra]
    try:
        lines = select(args.setup, extras, args.drop)
    except (OSError, ValueError, SyntaxError) as exc:
        print(f"requirements.py: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
