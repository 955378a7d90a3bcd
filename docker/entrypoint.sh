#!/usr/bin/env bash
# APT-ROS container entrypoint (Jetson and x86 images).
#
#   1. sources ROS 2 and the workspace overlays (franka_ros2 when the image has it, then APT-ROS);
#   2. when the command carries `model:=DIR` and `backend:=tensorrt|auto` (the `ros2 launch apt_policy
#      franka.launch.py ...` command of docker/compose.yaml does) and DIR is an ONNX export, builds the
#      TensorRT engines once per device into the engine cache (a volume) with
#      `apt-export trt --onnx DIR --out CACHE/NAME-PRECISION --cache-dir CACHE/cache` and points
#      `model:=` at the engine dir;
#      later starts find the cached engine (apt-export keys its cache on graph sha256, TensorRT version,
#      GPU, precision and profile, so a new model, driver stack or GPU rebuilds it);
#   3. runs the command (exec, so signals reach it directly).
#
# Failure policy: with backend:=tensorrt a missing TensorRT (apt-export exit 2) or a failed build stops
# the container with a message; it never starts the arm stack on something other than what was asked.
# With backend:=auto it logs a warning and starts on ONNX Runtime with the unchanged ONNX export.
#
# Environment (all optional):
#   APT_ROS_SETUP        ROS 2 setup file        (default /opt/ros/$ROS_DISTRO/setup.bash)
#   APT_OVERLAYS         overlay setup files, space separated, sourced in order when present
#                        (default "/opt/franka_ws/install/setup.bash /opt/apt_ros/install/setup.bash")
#   APT_ENGINE_CACHE     engine cache directory  (default /engines)
#   APT_TRT_PRECISION    fp16 | bf16 | fp8       (default fp16)
#   APT_TRT_FORCE        1 = rebuild even when a cached engine matches (default 0)
#   APT_BUILD_ENGINES    0 = never build engines here (default 1)
set -eo pipefail

log() { printf '[apt-entrypoint] %s\n' "$*" >&2; }
die() {
  local code=$1
  shift
  log "ERROR: $*"
  exit "$code"
}

ros_setup=${APT_ROS_SETUP:-/opt/ros/${ROS_DISTRO:-humble}/setup.bash}
[ -f "$ros_setup" ] || die 1 "ROS 2 setup file not found: $ros_setup (set ROS_DISTRO or APT_ROS_SETUP)"
# shellcheck source=/dev/null
source "$ros_setup"
for overlay in ${APT_OVERLAYS:-/opt/franka_ws/install/setup.bash /opt/apt_ros/install/setup.bash}; do
  if [ -f "$overlay" ]; then
    # shellcheck source=/dev/null
    source "$overlay"
  fi
done

[ "$#" -gt 0 ] || set -- bash
args=("$@")
model="" backend="" model_at=-1
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    model:=*) model=${args[$i]#model:=} model_at=$i ;;
    backend:=*) backend=${args[$i]#backend:=} ;;
  esac
done

build_engines() {
  # $1: ONNX export dir. Prints the engine dir on success; returns apt-export's exit status.
  local onnx_dir=$1 precision=${APT_TRT_PRECISION:-fp16} cache=${APT_ENGINE_CACHE:-/engines} out
  out="$cache/$(basename "$onnx_dir")-$precision"
  local extra=()
  [ "${APT_TRT_FORCE:-0}" = 1 ] && extra+=(--force)
  mkdir -p "$cache" || die 1 "engine cache $cache is not writable (mount a volume there, owned by uid $(id -u))"
  # Two containers starting together build once: the second waits here, then finds the cached engine.
  exec 9>"$out.lock"
  flock 9
  log "TensorRT engines for $onnx_dir -> $out ($precision); the first start on a device takes minutes"
  apt-export trt --onnx "$onnx_dir" --out "$out" --precision "$precision" --cache-dir "$cache/cache" \
    "${extra[@]}" >&2 || return $?
  printf '%s\n' "$out"
}

if [ -n "$model" ] && [ "${APT_BUILD_ENGINES:-1}" != 0 ] && { [ "$backend" = tensorrt ] || [ "$backend" = auto ]; }; then
  [ -d "$model" ] || die 1 "model:=$model is not a directory in the container (is the models volume mounted?)"
  if compgen -G "$model/*.onnx" >/dev/null; then
    rc=0
    engine_dir=$(build_engines "$model") || rc=$?
    if [ "$rc" -eq 0 ]; then
      args[model_at]="model:=$engine_dir"
    elif [ "$backend" = tensorrt ] && [ "$rc" -eq 2 ]; then
      die 2 "backend:=tensorrt but TensorRT is not available in this container (apt-export trt exit 2);" \
        "use the image built for this device, or backend:=onnxruntime"
    elif [ "$backend" = tensorrt ]; then
      die "$rc" "TensorRT engine build failed (apt-export trt exit $rc); not starting. Fix the build or use backend:=onnxruntime"
    else
      log "WARNING: no TensorRT engine (apt-export trt exit $rc); backend:=auto continues on ONNX Runtime with $model"
    fi
  else
    log "model:=$model has no *.onnx graphs (engine dir or bundle): used as it is"
  fi
fi

exec "${args[@]}"
