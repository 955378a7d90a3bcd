#!/usr/bin/env bash
# One-command environment for APT-ROS.  Usage: tools/setup.sh [full|runtime]
#
#   full     (default) developer install: torch, ONNX Runtime, exporter, tests, linters
#   runtime  robot install: ONNX Runtime / TensorRT path only (no torch, no transformers)
#
# Without a sourced ROS 2 (no ROS_DISTRO) it installs ROS 2 Kilted from pip wheels into the venv,
# repairs their CMake files and builds apt_msgs into the venv, so `from apt_msgs.msg import ...`
# works with no sourcing. With a sourced ROS 2 (Humble/Jazzy/Kilted) the venv sees the system
# packages and apt_msgs is built with colcon into ros2_ws/install (source ros2_ws/install/setup.bash).
# Idempotent: steps whose inputs did not change are skipped.
set -euo pipefail
mode=${1:-full}
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

case "$mode" in
  full) extras=ort,torch,data,dev; editables=(-e "ros2_ws/src/apt_policy[EXTRAS]" -e export) ;;
  runtime) extras=ort,data; editables=(-e "ros2_ws/src/apt_policy[EXTRAS]") ;;
  *) echo "usage: $0 [full|runtime]" >&2; exit 2 ;;
esac
[ -z "${ROS_DISTRO:-}" ] && extras="$extras,ros"
editables=("${editables[@]/EXTRAS/$extras}")

tools/check_prereqs.sh

if [ ! -x "$VENV/bin/python" ]; then
  flags=()
  [ -n "${ROS_DISTRO:-}" ] && flags+=(--system-site-packages)
  log "creating $VENV with $("$PYTHON" --version 2>&1)${ROS_DISTRO:+ (sees system ROS 2 $ROS_DISTRO)}"
  "$PYTHON" -m venv "${flags[@]}" "$VENV"
fi
py=$VENV/bin/python

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
deps_hash="$mode/$extras/${ROS_DISTRO:-wheels}/$(stamp_of ros2_ws/src/apt_policy/setup.py ros2_ws/src/apt_policy/setup.cfg export/pyproject.toml)"
if [ "$(cat "$VENV/.apt-deps" 2>/dev/null)" != "$deps_hash" ]; then
  log "installing Python packages ($mode: apt_policy[$extras]); first time takes a few minutes"
  "$py" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel >"$VENV/pip-install.log" 2>&1 || { tail -20 "$VENV/pip-install.log"; exit 1; }
  "$py" -m pip install --disable-pip-version-check --progress-bar off "${editables[@]}" >"$VENV/pip-install.log" 2>&1 ||
    { grep -vE "is ignored: it is neither" "$VENV/pip-install.log" | tail -30; echo "pip install failed (log: $VENV/pip-install.log)" >&2; exit 1; }
  log "$(awk '/^Successfully installed/{n=NF-2} END{print n+0}' "$VENV/pip-install.log") packages installed (log: $VENV/pip-install.log)"
  "$py" -m pip check >/dev/null || log "warning: pip check reports conflicts ($py -m pip check)"
  rm -f "$VENV/.apt-msgs"  # a reinstall of the wheels needs the CMake repair and a rebuild
  echo "$deps_hash" > "$VENV/.apt-deps"
else
  log "Python packages up to date"
fi

msgs_hash="${ROS_DISTRO:-wheels}/$(find ros2_ws/src/apt_msgs -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.apt-msgs" 2>/dev/null)" != "$msgs_hash" ]; then
  if [ -n "${ROS_DISTRO:-}" ]; then
    log "building apt_msgs with colcon against ROS 2 $ROS_DISTRO"
    (cd ros2_ws && colcon build --packages-select apt_msgs --event-handlers console_cohesion-)
    log "now: source ros2_ws/install/setup.bash"
  else
    "$py" tools/fix_ros_wheels.py
    prefix=$(cd "$VENV" && pwd)
    log "building apt_msgs into $VENV"
    rm -rf build/apt_msgs; mkdir -p build
    cmake -S ros2_ws/src/apt_msgs -B build/apt_msgs -Wno-dev \
      -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
      -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_INSTALL_PREFIX="$prefix" \
      -DPython3_EXECUTABLE="$prefix/bin/python" >build/apt_msgs.log 2>&1 ||
      { tail -30 build/apt_msgs.log; echo "apt_msgs: cmake configure failed (log: build/apt_msgs.log)" >&2; exit 1; }
    if ! { cmake --build build/apt_msgs -j "$(nproc)" && cmake --install build/apt_msgs; } >>build/apt_msgs.log 2>&1; then
      tail -30 build/apt_msgs.log; echo "apt_msgs: build failed (log: build/apt_msgs.log)" >&2; exit 1
    fi
    "$py" -c "from apt_msgs.msg import ActionChunk, PolicyStatus; from apt_msgs.srv import SetInstruction; from apt_msgs.action import FollowInstruction" ||
      { echo "apt_msgs built but does not import" >&2; exit 1; }
  fi
  echo "$msgs_hash" > "$VENV/.apt-msgs"
else
  log "apt_msgs up to date"
fi
log "ready ($mode): activate with 'source $VENV/bin/activate'"
