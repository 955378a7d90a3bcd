"""Parameters of the policy node: one table (name, default, description, range or choices), declared with
descriptors, read into a frozen :class:`NodeParams`, validated with messages that name the parameter.

``config/franka.yaml`` documents every entry for a real setup; ``docs/NODE.md`` has the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apt_policy.runtime.latency import parse_latency

OUTPUT_MODES = ("joint_trajectory", "joint_position", "none")
BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
ROBOTS = ("fr3", "panda")
BLENDING = ("none", "crossfade", "ensemble")
CHUNK_EXECUTION = ("auto", "rtc", "crossfade", "ensemble", "none")
SIMULATION_ONLY = ("simulated_latency",)  # config/franka.yaml never sets these


class ParameterError(ValueError):
    """An invalid node parameter; the message names it and says why."""


@dataclass(frozen=True)
class Spec:
    """One parameter: default value (its type is the parameter's type), description, and bounds."""

    name: str
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    read_only: bool = True


SPECS: tuple[Spec, ...] = (
    Spec(
        "model", "", "Exported model directory (apt-export onnx/trt output) or bundle dir for backend torch."
    ),
    Spec(
        "backend",
        "auto",
        "Inference backend: auto picks tensorrt, then onnxruntime, then torch.",
        choices=BACKENDS,
    ),
    Spec(
        "inference_threads",
        0,
        "ONNX Runtime intra-op threads (0: one per core). Leave a core for the stream on small CPUs.",
        0,
        256,
    ),
    Spec(
        "inference_spinning",
        False,
        "Let idle ONNX Runtime threads spin (lower latency, but they steal CPU from the command stream).",
    ),
    Spec(
        "inference_process",
        True,
        "Run the policy in a child process (its own interpreter: model pre/post-processing never holds "
        "the command stream's interpreter lock). false: in a thread of the node.",
    ),
    Spec("robot", "fr3", "Robot profile (joint names and hardware limits).", choices=ROBOTS),
    Spec(
        "control_rate",
        100.0,
        "Command stream rate (Hz); commands are published from a monotonic-clock thread.",
        10.0,
        1000.0,
    ),
    Spec(
        "output_mode",
        "joint_trajectory",
        "joint_trajectory: JTC look-ahead; joint_position: Float64MultiArray to a forward position "
        "controller; "
        "none: dry run (no arm command).",
        choices=OUTPUT_MODES,
    ),
    Spec("instruction", "", "Instruction to start with (empty: IDLE until one arrives on ~/instruction)."),
    Spec(
        "max_instruction_bytes",
        1024,
        "Longest accepted instruction (UTF-8 bytes); longer ones are rejected.",
        1,
        65536,
    ),
    # inputs
    Spec(
        "camera_names",
        [""],
        "Model camera names, in the same order as camera_topics (empty: the model's own).",
    ),
    Spec(
        "camera_topics",
        ["/camera/camera/color/image_raw"],
        "Camera topics; a topic ending in /compressed is subscribed as sensor_msgs/CompressedImage.",
    ),
    Spec(
        "joint_states_topic", "/franka/joint_states", "sensor_msgs/JointState of the arm (reordered by name)."
    ),
    Spec(
        "poll_joint_states",
        True,
        "Take the newest joint state in the stream thread each tick instead of an executor callback per "
        "message (franka publishes at 1 kHz: callbacks would cost the executor most of a core).",
    ),
    Spec(
        "poll_cameras",
        True,
        "Take the newest raw camera frames in the stream thread right after each command is sent (frames "
        "wait at most one period) instead of an executor callback that could hold the GIL at a send "
        "deadline. Compressed topics always use a callback (JPEG decoding takes milliseconds).",
    ),
    Spec(
        "gripper_states_topic",
        "/franka_gripper/joint_states",
        "sensor_msgs/JointState of the gripper fingers; width = sum of finger positions.",
    ),
    Spec("max_image_age", 0.2, "Oldest camera frame (s since receipt) the policy may act on.", 0.001, 10.0),
    Spec(
        "max_state_age",
        0.05,
        "Oldest joint state (s since receipt) the policy may act on.",
        0.001,
        10.0,
    ),
    Spec(
        "max_gripper_age",
        0.2,
        "Oldest gripper width (s since receipt); franka_gripper publishes at 15 Hz.",
        0.001,
        10.0,
    ),
    Spec(
        "max_skew",
        0.1,
        "Largest spread of sensor stamps between cameras and state in one observation (s).",
        0.001,
        10.0,
    ),
    # outputs
    Spec(
        "trajectory_topic",
        "/fr3_arm_controller/joint_trajectory",
        "JointTrajectory topic (output_mode joint_trajectory).",
    ),
    Spec(
        "position_command_topic",
        "/fr3_position_controller/commands",
        "Float64MultiArray topic (output_mode joint_position).",
    ),
    Spec(
        "gripper_command_topic",
        "/franka_gripper/width_command",
        "std_msgs/Float64 gripper width command (m).",
    ),
    Spec("lookahead_points", 5, "JTC points sent per tick (safe look-ahead over the schedule).", 1, 100),
    Spec(
        "trajectory_stamp",
        "zero",
        "zero: header.stamp 0, the JTC starts each look-ahead on receipt (no clock sync needed); tick: "
        "stamped with the tick's deadline, immune to delivery jitter (controller clock must be synced).",
        choices=("zero", "tick"),
    ),
    Spec(
        "publish_lead",
        0.8,
        "Fraction of a period by which each command is computed before its deadline; it is published at "
        "the deadline (regular stream, latency + lead). 0: published as soon as computed.",
        0.0,
        0.9,
    ),
    Spec(
        "realtime_priority",
        0,
        "SCHED_FIFO priority of the stream thread (1-99; needs CAP_SYS_NICE or rtprio limits), the node's "
        "other threads one less when the model runs in its own process, memory locked; 0 = normal.",
        0,
        99,
    ),
    Spec("status_rate", 10.0, "~/status and /diagnostics rate (Hz).", 0.5, 100.0),
    # control
    Spec(
        "chunk_request_threshold",
        -1,
        "Request the next chunk when the executing one has this many actions left (-1: half the horizon).",
        -1,
        10000,
    ),
    Spec(
        "inference_timeout",
        1.0,
        "Inference slower than this (s) is a failure: HOLD, result discarded.",
        0.01,
        60.0,
    ),
    Spec(
        "blending",
        "crossfade",
        "Chunk switch: none, crossfade over blending_steps, or ensemble (ACT weights).",
        choices=BLENDING,
    ),
    Spec(
        "chunk_execution",
        "auto",
        "Chunk switches: rtc (real-time chunking: the actions that execute during inference are sent as a "
        "committed prefix, the new chunk takes over after them), crossfade, ensemble, none; auto: rtc when "
        "the model takes a prefix, else the 'blending' mode. rtc for a model without RTC inputs falls back "
        "to 'blending'.",
        choices=CHUNK_EXECUTION,
    ),
    Spec(
        "rtc_delay_quantile",
        0.95,
        "Real-time chunking: the committed prefix covers this quantile of the measured inference delays.",
        0.5,
        1.0,
    ),
    Spec(
        "simulated_latency",
        "",
        "SIMULATION ONLY: delay every inference to a latency profile ('' off, none, fixed:<ms>, orin, thor, "
        "rtx4090). Never set it on a robot.",
    ),
    Spec("blending_steps", 3, "Cross-fade length (chunk actions).", 1, 1000),
    Spec("ensemble_m", 0.01, "Temporal ensembling weight decay exp(-m*i).", 0.0, 10.0),
    Spec("position_margin", 0.05, "Keep commands this far inside the joint position limits (rad).", 0.0, 0.5),
    Spec("velocity_scale", 0.5, "Fraction of the hardware velocity limits commands may use.", 0.01, 1.0),
    Spec(
        "acceleration_scale", 0.5, "Fraction of the hardware acceleration limits commands may use.", 0.01, 1.0
    ),
    Spec(
        "max_deviation",
        0.25,
        "Largest distance of a policy target from the measured position per joint (rad); farther targets "
        "are clamped to it.",
        0.001,
        3.0,
    ),
    Spec(
        "max_tracking_error",
        0.2,
        "Measured position further than this from the command on any joint (rad) -> FAULT (operator clears).",
        0.01,
        3.0,
    ),
)

SPEC_BY_NAME = {s.name: s for s in SPECS}


@dataclass(frozen=True)
class NodeParams:
    """Validated parameter values (names as in :data:`SPECS`)."""

    model: str
    backend: str
    inference_threads: int
    inference_spinning: bool
    inference_process: bool
    robot: str
    control_rate: float
    output_mode: str
    instruction: str
    max_instruction_bytes: int
    camera_names: tuple[str, ...]
    camera_topics: tuple[str, ...]
    joint_states_topic: str
    poll_joint_states: bool
    poll_cameras: bool
    gripper_states_topic: str
    max_image_age: float
    max_state_age: float
    max_gripper_age: float
    max_skew: float
    trajectory_topic: str
    position_command_topic: str
    gripper_command_topic: str
    lookahead_points: int
    trajectory_stamp: str
    publish_lead: float
    realtime_priority: int
    status_rate: float
    chunk_request_threshold: int
    inference_timeout: float
    blending: str
    chunk_execution: str
    rtc_delay_quantile: float
    simulated_latency: str
    blending_steps: int
    ensemble_m: float
    position_margin: float
    velocity_scale: float
    acceleration_scale: float
    max_deviation: float
    max_tracking_error: float

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate


def validate(values: dict[str, Any], check_model: bool = True) -> NodeParams:
    """Check types, ranges, choices and cross-parameter rules; build :class:`NodeParams`.

    ``check_model=False`` skips the model directory check (the simulated-clock evaluator passes a policy).
    """
    out: dict[str, Any] = {}
    for spec in SPECS:
        if spec.name not in values:
            raise ParameterError(f"parameter '{spec.name}' is missing")
        out[spec.name] = check_value(spec, values[spec.name])
    cams = tuple(n for n in out["camera_names"] if n)
    topics = tuple(t for t in out["camera_topics"] if t)
    if not topics:
        raise ParameterError("parameter 'camera_topics' is empty: the policy needs at least one camera")
    if cams and len(cams) != len(topics):
        raise ParameterError(
            f"parameters 'camera_names' ({len(cams)}) and 'camera_topics' ({len(topics)}) "
            "must have the same length"
        )
    for group, items in (("camera_names", cams), ("camera_topics", topics)):
        if len(set(items)) != len(items):
            raise ParameterError(f"parameter '{group}' has duplicates: {list(items)}")
    out["camera_names"], out["camera_topics"] = cams, topics
    if check_model and not out["model"]:
        raise ParameterError("parameter 'model' is empty: set it to an exported model directory")
    if check_model and not Path(out["model"]).expanduser().is_dir():
        raise ParameterError(f"parameter 'model': directory {out['model']!r} does not exist")
    if out["max_tracking_error"] >= out["max_deviation"]:
        # Otherwise an arm that stopped following (a frozen joint) leaves the command parked up to
        # max_deviation away without ever tripping the tracking-error FAULT.
        raise ParameterError(
            f"parameter 'max_tracking_error' ({out['max_tracking_error']}) must be smaller than "
            f"'max_deviation' ({out['max_deviation']}) so a stalled arm faults"
        )
    if out["max_skew"] > max(out["max_image_age"], out["max_state_age"]) * 10:
        raise ParameterError(
            "parameter 'max_skew' is more than 10x the max input ages: check units (seconds)"
        )
    try:
        parse_latency(out["simulated_latency"])
    except ValueError as exc:
        raise ParameterError(f"parameter 'simulated_latency': {exc}") from None
    return NodeParams(**out)


def defaults(**overrides: Any) -> NodeParams:
    """The default parameters with ``overrides``, validated (no model directory needed)."""
    values = {s.name: s.default for s in SPECS}
    values.update(overrides)
    return validate(values, check_model=False)


def check_value(spec: Spec, value: Any, error: type[ParameterError] = ParameterError) -> Any:
    """``value`` in the spec's type (int -> float, list -> tuple), or ``error`` naming the parameter."""
    kind = type(spec.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise error(f"parameter '{spec.name}' must be a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise error(f"parameter '{spec.name}' must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise error(f"parameter '{spec.name}' must be finite, got {value}")
    if spec.choices and value not in spec.choices:
        raise error(f"parameter '{spec.name}' is {value!r}; choose one of {list(spec.choices)}")
    high = math.inf if spec.high is None else spec.high
    if spec.low is not None and not (spec.low <= value <= high):
        raise error(f"parameter '{spec.name}' = {value} is outside [{spec.low}, {spec.high}]")
    return value


def declare_and_read(node) -> NodeParams:
    """Declare every parameter on ``node`` with a descriptor (description, range); return validated values."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values = {}
    for spec in SPECS:
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        # Accept `control_rate: 100` for a double parameter; validate() converts and checks the type.
        desc.dynamic_typing = isinstance(spec.default, float)
        if spec.choices:
            desc.additional_constraints = "one of: " + ", ".join(spec.choices)
        # Ranges are checked by validate() with a message naming the parameter; they are still advertised.
        if spec.low is not None and isinstance(spec.default, float):
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))
            ]
        elif spec.low is not None and isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
        try:
            param = node.declare_parameter(spec.name, spec.default, desc)
        except Exception as exc:  # rclpy: InvalidParameterValueException / type mismatch
            raise ParameterError(f"parameter '{spec.name}': {exc}") from exc
        values[spec.name] = param.value
    return validate(values)
