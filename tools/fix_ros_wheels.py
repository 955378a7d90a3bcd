"""Repair the CMake export files of the ROS 2 pip wheels so packages can be built against them.

The wheels were built in a manylinux container; about 15 files under ``$VIRTUAL_ENV/share/*/cmake``
hard-code that container's Python include directory and NumPy include directory, and CMake refuses
to configure ("includes non-existent path"). This rewrites them to this interpreter's paths.
Idempotent: run it after every (re)install of the wheels.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

# /opt/python/cp311-cp311/include/python3.11 and .../site-packages/numpy/_core/include (any cpXY)
_PY_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
_NP_INCLUDE = re.compile(
    r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include"
)


def repair(prefix: Path) -> int:
    """Rewrite the builder paths in ``prefix/share/*/cmake/*.cmake``; return how many files changed."""
    import numpy

    py_include = sysconfig.get_paths()["include"]
    np_include = numpy.get_include()
    changed = 0
    for path in sorted(prefix.glob("share/*/cmake/*.cmake")):
        text = path.read_text()
        new = _NP_INCLUDE.sub(np_include, text)
        new = _PY_INCLUDE.sub(py_include, new)
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


def main() -> int:
    prefix = Path(sys.prefix)
    if not (prefix / "share" / "ament_cmake").is_dir():
        print(f"fix_ros_wheels: no ROS 2 wheels under {prefix}; nothing to do")
        return 0
    n = repair(prefix)
    print(f"fix_ros_wheels: rewrote builder paths in {n} CMake file(s) under {prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main())
