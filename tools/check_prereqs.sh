#!/usr/bin/env bash
# Checks what `make setup` needs from the system and names the Debian/Ubuntu package for anything missing.
set -u
PYTHON=${PYTHON:-python3}
missing=()
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  missing+=("$PYTHON (apt install python3)")
else
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
    missing+=("Python >= 3.10 (found $("$PYTHON" --version 2>&1); set PYTHON=python3.10 or newer)")
  "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=("python venv support (apt install python3-venv)")
  "$PYTHON" -c 'import os, sysconfig, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' ||
    missing+=("Python headers (apt install python3-dev)")
fi
if [ -z "${ROS_DISTRO:-}" ] || ! command -v colcon >/dev/null 2>&1; then
  command -v cmake >/dev/null 2>&1 || missing+=("cmake (apt install cmake)")
fi
command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || missing+=("a C/C++ compiler (apt install build-essential)")
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || missing+=("a C++ compiler (apt install g++)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "make setup: missing prerequisites:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 1
fi
