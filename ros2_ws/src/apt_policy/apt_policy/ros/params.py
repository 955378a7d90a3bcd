"""Every parameter of the policy node and of its interfaces, declared once.

A parameter is a field of :class:`NodeParams` (the node) or :class:`InterfaceParams` (services, action,
gripper, in-process RealSense) made with :func:`param`: name (the field's, or ``name=`` for a dotted ROS
name), type (the default's), default, range or choices, description, and whether it may change at run time
(``dynamic``; ``tighten`` says which direction tightens a safety limit). From that one declaration:

* :func:`declare` declares the ROS parameters with descriptors and returns the validated typed config,
* :func:`validate` / :func:`validate_interfaces` check types, ranges, choices and cross-parameter rules with
  messages that name the parameter,
* :func:`check_update` validates a run-time change: read-only parameters are refused, and a safety limit is
  never loosened while the arm is commanded to move,
* :func:`markdown` writes ``docs/PARAMETERS.md`` (``python -m apt_policy.ros.params > docs/PARAMETERS.md``;
  a test keeps the file in sync), the way generate_parameter_library's YAML serves ros2_controllers.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from apt_policy.control.blending import CROSSFADE_SHAPES
from apt_policy.control.gripper import GripperDecisionConfig
from apt_policy.ros.gripper_output import OUTPUT_MODES as GRIPPER_OUTPUTS
from apt_policy.ros.gripper_output import GripperOutputSettings
from apt_policy.runtime.latency import parse_latency
from apt_policy.runtime.load import BACKENDS

OUTPUT_MODES = ("joint_trajectory", "joint_position", "none")
ROBOTS = ("fr3", "panda")
BLENDING = ("none", "crossfade", "ensemble")
CHUNK_EXECUTION = ("auto", "rtc", "crossfade", "ensemble", "none")
SIMULATION_ONLY = ("simulated_latency",)  # config/franka.yaml never sets these
TIGHTEN = ("", "lower", "higher")

_G = GripperDecisionConfig()
_S = GripperOutputSettings()


class ParameterError(ValueError):
    """An invalid node parameter; the message names it and says why."""


@dataclass(frozen=True)
class Spec:
    """One parameter: ROS name, default (its type is the parameter's type), description, bounds, mutability.

    ``dynamic`` parameters may be set at run time; ``tighten`` ("lower" / "higher") names the direction
    that tightens a safety limit (the other direction is refused while the arm is commanded to move).
    """

    name: str
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    dynamic: bool = False
    tighten: str = ""
    attr: str = ""  # the config field (the name with dots as underscores)

    @property
    def read_only(self) -> bool:
        return not self.dynamic


def param(
    default: Any,
    description: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] = (),
    name: str = "",
    dynamic: bool = False,
    tighten: str = "",
) -> Any:
    """A config field carrying its parameter's declaration (see the module docstring)."""
    if tighten not in TIGHTEN or (tighten and not dynamic):
        raise ValueError(f"tighten must be one of {TIGHTEN} and needs dynamic=True")
    meta = {"name": name, "description": description, "low": low, "high": high, "choices": choices}
    meta.update(dynamic=dynamic, tighten=tighten)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class NodeParams:
    """The policy node's validated parameters (see ``docs/PARAMETERS.md``)."""

    model: str = param(
        "",
        "Exported model directory (apt-export onnx/trt output) or bundle dir for backend torch.",
    )
    backend: str = param(
        "auto",
        "Inference backend. auto: by the model directory (runtime.load_policy): a TensorRT engine dir "
        "-> tensorrt, an ONNX export dir -> onnxruntime (CUDA provider when present), a training "
        "bundle -> torch. remote: an inference node on another computer (apt-inference-node, parameters "
        "remote_*; 'model' is then unused).",
        choices=(*BACKENDS, "remote"),
    )
    remote_server: str = param(
        "apt_inference",
        "backend remote: the inference node's name (its topics <name>/request, <name>/chunk, <name>/info).",
    )
    remote_image_encoding: str = param(
        "jpeg",
        "backend remote: camera frames are resized to the model's input and sent as 'jpeg' or raw 'rgb8'.",
        choices=("jpeg", "rgb8"),
    )
    remote_jpeg_quality: int = param(90, "backend remote: JPEG quality (1-100).", low=1, high=100)
    remote_connect_timeout: float = param(
        30.0, "backend remote: longest wait (s) for the inference node at configure.", low=0.1, high=3600.0
    )
    inference_threads: int = param(
        0,
        "ONNX Runtime intra-op threads (0: one per core). Leave a core for the stream on small CPUs.",
        low=0,
        high=256,
    )
    inference_spinning: bool = param(
        False,
        "Let idle ONNX Runtime threads spin (lower latency, but they steal CPU from the command stream).",
    )
    inference_process: bool = param(
        True,
        "Run the policy in a child process (its own interpreter: model pre/post-processing never holds "
        "the command stream's interpreter lock). false: in a thread of the node.",
    )
    inference_restarts: int = param(
        3,
        "With inference_process: how many times in a row a dead inference process is replaced (after 1, 2, "
        "4, ... s; a successful prediction resets the count) before the node gives up and FAULTs.",
        low=0,
        high=100,
    )
    robot: str = param(
        "fr3",
        "Robot profile (joint names and hardware limits).",
        choices=ROBOTS,
    )
    control_rate: float = param(
        100.0,
        "Command stream rate (Hz); commands are published from a monotonic-clock thread.",
        low=10.0,
        high=1000.0,
    )
    output_mode: str = param(
        "joint_trajectory",
        "joint_trajectory: JTC look-ahead; joint_position: Float64MultiArray to a forward position "
        "controller; "
        "none: dry run (no arm command).",
        choices=OUTPUT_MODES,
    )
    autostart: bool = param(
        True,
        "Configure and activate right after start (one command, as before the lifecycle). false: the node "
        "starts unconfigured and waits for its lifecycle transitions (~/change_state: configure loads the "
        "model and self-checks it, activate starts streaming; `ros2 lifecycle set /apt_policy configure`).",
    )
    instruction: str = param(
        "",
        "Instruction to start with (empty: IDLE until one arrives on ~/instruction); set on activation.",
    )
    max_instruction_bytes: int = param(
        1024,
        "Longest accepted instruction (UTF-8 bytes); longer ones are rejected.",
        low=1,
        high=65536,
    )
    camera_names: tuple[str, ...] = param(
        ("",),
        "Model camera names, in the same order as camera_topics (empty: the model's own live cameras; its "
        "start views, <camera>@start, are filled by the node and need no topic).",
    )
    camera_topics: tuple[str, ...] = param(
        ("/camera/camera/color/image_raw",),
        "Camera topics; a topic ending in /compressed is subscribed as sensor_msgs/CompressedImage.",
    )
    joint_states_topic: str = param(
        "/franka/joint_states",
        "sensor_msgs/JointState of the arm (reordered by name).",
    )
    poll_joint_states: bool = param(
        True,
        "Take the newest joint state in the stream thread each tick instead of an executor callback per "
        "message (franka publishes at 1 kHz: callbacks would cost the executor most of a core).",
    )
    poll_cameras: bool = param(
        True,
        "Take the newest raw camera frames in the stream thread right after each command is sent (frames "
        "wait at most one period) instead of an executor callback that could hold the GIL at a send "
        "deadline. Compressed topics always use a callback (JPEG decoding takes milliseconds).",
    )
    camera_reliability: str = param(
        "reliable",
        "QoS reliability of the camera subscriptions (keep last 1). reliable: lost fragments of a large "
        "frame are repaired (best effort lost 46% of fake_camera's 640x480 frames here, gaps up to 1.3 s); "
        "best_effort only for a camera that publishes best effort (a reliable reader gets nothing from it).",
        choices=("reliable", "best_effort"),
    )
    gripper_states_topic: str = param(
        "/franka_gripper/joint_states",
        "sensor_msgs/JointState of the gripper fingers; width = sum of finger positions.",
    )
    max_image_age: float = param(
        0.2,
        "Oldest camera frame (s since receipt) the policy may act on.",
        low=0.001,
        high=10.0,
    )
    max_state_age: float = param(
        0.05,
        "Oldest joint state (s since receipt) the policy may act on.",
        low=0.001,
        high=10.0,
    )
    max_gripper_age: float = param(
        0.2,
        "Oldest gripper width (s since receipt); franka_gripper publishes at 15 Hz.",
        low=0.001,
        high=10.0,
    )
    max_skew: float = param(
        0.1,
        "Largest spread of sensor stamps between cameras and state in one observation (s).",
        low=0.001,
        high=10.0,
    )
    trajectory_topic: str = param(
        "/fr3_arm_controller/joint_trajectory",
        "JointTrajectory topic (output_mode joint_trajectory).",
    )
    position_command_topic: str = param(
        "/fr3_position_controller/commands",
        "Float64MultiArray topic (output_mode joint_position).",
    )
    gripper_command_topic: str = param(
        "/franka_gripper/width_command",
        "std_msgs/Float64 gripper width command (m).",
    )
    lookahead_points: int = param(
        5,
        "JTC points sent per tick (safe look-ahead over the schedule).",
        low=1,
        high=100,
    )
    trajectory_stamp: str = param(
        "zero",
        "zero: header.stamp 0, the JTC starts each look-ahead on receipt (no clock sync needed); tick: "
        "stamped with the tick's deadline, immune to delivery jitter (controller clock must be synced).",
        choices=("zero", "tick"),
    )
    commit_points: int = param(
        2,
        "trajectory_stamp tick: the first points of each look-ahead repeat what the arm's controller already "
        "executes, so a message delivered up to that many periods late (plus ~25 ms) changes nothing; "
        "reactions (new chunks, holds) start that much later. Must be below lookahead_points.",
        low=0,
        high=99,
    )
    publish_lead: float = param(
        0.8,
        "Fraction of a period by which each command is computed before its deadline; it is published at "
        "the deadline (regular stream, latency + lead). 0: published as soon as computed.",
        low=0.0,
        high=0.9,
    )
    realtime_priority: int = param(
        0,
        "SCHED_FIFO priority of the stream thread (1-99; needs CAP_SYS_NICE or rtprio limits), the node's "
        "other threads one less when the model runs in its own process, memory locked; 0 = normal.",
        low=0,
        high=99,
    )
    status_rate: float = param(
        10.0,
        "~/status and /diagnostics rate (Hz).",
        low=0.5,
        high=100.0,
    )
    chunk_request_threshold: int = param(
        -1,
        "Request the next chunk when the executing one has this many actions left (-1: half the horizon); "
        "the floor: the node raises it to the delay estimate + 1, or + blending_steps when switches are "
        "cross-faded (docs/CONTROL.md).",
        low=-1,
        high=10000,
        dynamic=True,
    )
    inference_timeout: float = param(
        1.0,
        "Inference slower than this (s) is a failure: HOLD, result discarded.",
        low=0.01,
        high=60.0,
    )
    blending: str = param(
        "crossfade",
        "Chunk switch: none, crossfade over blending_steps, or ensemble (ACT weights).",
        choices=BLENDING,
        dynamic=True,
    )
    chunk_execution: str = param(
        "auto",
        "Chunk switches: rtc (real-time chunking: the actions that execute during inference are sent as a "
        "committed prefix, the new chunk takes over after them), crossfade, ensemble, none; auto: rtc when "
        "the model takes a prefix, else the 'blending' mode. rtc for a model without RTC inputs falls back "
        "to 'blending'.",
        choices=CHUNK_EXECUTION,
    )
    rtc_delay_quantile: float = param(
        0.95,
        "Real-time chunking: the committed prefix covers this quantile of the measured inference delays.",
        low=0.5,
        high=1.0,
    )
    rtc_prefix_max: int = param(
        0,
        "Real-time chunking: send at most this many committed rows (0: the whole delay estimate). With K > 0 "
        "a chunk whose delay exceeds K is cross-faded in from its arrival (anchored; docs/CONTROL.md).",
        low=0,
        high=1000,
    )
    rtc_takeover_blend: bool = param(
        False,
        "Real-time chunking: cross-fade an on-time chunk in from its take-over (its last committed action, "
        "where both chunks are at the same target) over blending_steps with blending_shape, instead of "
        "switching there; spreads the change of slope (docs/CONTROL.md). False: the method as published.",
    )
    simulated_latency: str = param(
        "",
        "SIMULATION ONLY: delay every inference to a latency profile ('' off, none, fixed:<ms>, orin, thor, "
        "rtx4090). Never set it on a robot.",
    )
    blending_steps: int = param(
        3,
        "Cross-fade length (chunk actions).",
        low=1,
        high=1000,
        dynamic=True,
    )
    blending_shape: str = param(
        "linear",
        "Cross-fade weight over blending_steps: linear, or smoothstep (zero slope at both ends: the blend "
        "adds no velocity step at the switch; docs/CONTROL.md). Also the tail of an anchored RTC chunk.",
        choices=CROSSFADE_SHAPES,
        dynamic=True,
    )
    ensemble_m: float = param(
        0.01,
        "Temporal ensembling weight decay exp(-m*i).",
        low=0.0,
        high=10.0,
        dynamic=True,
    )
    position_margin: float = param(
        0.05,
        "Keep commands this far inside the joint position limits (rad).",
        low=0.0,
        high=0.5,
        dynamic=True,
        tighten="higher",
    )
    velocity_scale: float = param(
        0.5,
        "Fraction of the hardware velocity limits commands may use.",
        low=0.01,
        high=1.0,
        dynamic=True,
        tighten="lower",
    )
    acceleration_scale: float = param(
        0.5,
        "Fraction of the hardware acceleration limits commands may use.",
        low=0.01,
        high=1.0,
        dynamic=True,
        tighten="lower",
    )
    max_deviation: float = param(
        0.25,
        "Largest distance of a policy target from the measured position per joint (rad); farther targets "
        "are clamped to it.",
        low=0.001,
        high=3.0,
        dynamic=True,
        tighten="lower",
    )
    max_tracking_error: float = param(
        0.2,
        "Measured position further than this from the command on any joint (rad) -> FAULT (operator clears).",
        low=0.01,
        high=3.0,
        dynamic=True,
        tighten="lower",
    )

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate


@dataclass(frozen=True)
class InterfaceParams:
    """The operator interfaces' validated parameters (ros/interfaces.py); empty list entries are dropped."""

    interfaces_feedback_rate: float = param(
        10.0,
        "FollowInstruction feedback and goal supervision rate (Hz).",
        low=2.0,
        high=100.0,
        name="interfaces.feedback_rate",
    )
    gripper_output: str = param(
        _S.output,
        "auto (franka_actions when franka_msgs imports, else width_topic), "
        "franka_actions, width_topic, none.",
        choices=GRIPPER_OUTPUTS,
        name="gripper.output",
    )
    gripper_node_name: str = param(
        _S.node_name,
        "franka_gripper node name; actions <name>/move and <name>/grasp.",
        name="gripper.node_name",
    )
    gripper_width_topic: str = param(
        "",
        "std_msgs/Float64 width topic for width_topic mode "
        "(empty: the node's gripper_command_topic, else /franka_gripper/width_command).",
        name="gripper.width_topic",
    )
    gripper_decision: Literal["binary", "width"] = param(
        _G.mode,
        "binary: open/close on threshold with hysteresis; width: follow the width.",
        choices=("binary", "width"),
        name="gripper.decision",
    )
    gripper_threshold: float = param(
        _G.threshold,
        "binary: widths below it mean close (m).",
        low=0.0,
        high=0.2,
        name="gripper.threshold",
    )
    gripper_hysteresis: float = param(
        _G.hysteresis,
        "binary: total dead band around the threshold (m).",
        low=0.0,
        high=0.1,
        name="gripper.hysteresis",
    )
    gripper_open_width: float = param(
        _G.open_width,
        "binary: width commanded for open (m).",
        low=0.0,
        high=0.2,
        name="gripper.open_width",
    )
    gripper_closed_width: float = param(
        _G.closed_width,
        "binary: grasp target width for close (m).",
        low=0.0,
        high=0.2,
        name="gripper.closed_width",
    )
    gripper_max_width: float = param(
        _G.max_width,
        "largest width ever commanded (m).",
        low=0.001,
        high=0.2,
        name="gripper.max_width",
    )
    gripper_min_width_delta: float = param(
        _G.min_width_delta,
        "width: smallest change that is commanded (m).",
        low=0.0,
        high=0.1,
        name="gripper.min_width_delta",
    )
    gripper_min_interval: float = param(
        _G.min_interval,
        "shortest time between two gripper commands (s).",
        low=0.0,
        high=10.0,
        name="gripper.min_interval",
    )
    gripper_speed: float = param(
        _S.speed,
        "finger speed of move/grasp (m/s).",
        low=0.001,
        high=0.2,
        name="gripper.speed",
    )
    gripper_force: float = param(
        _S.force,
        "grasp force (N).",
        low=1.0,
        high=70.0,
        name="gripper.force",
    )
    gripper_epsilon_inner: float = param(
        _S.epsilon_inner,
        "grasp succeeds down to width - epsilon_inner (m).",
        low=0.0,
        high=0.08,
        name="gripper.epsilon_inner",
    )
    gripper_epsilon_outer: float = param(
        _S.epsilon_outer,
        "grasp succeeds up to width + epsilon_outer (m).",
        low=0.0,
        high=0.08,
        name="gripper.epsilon_outer",
    )
    realsense_camera_names: tuple[str, ...] = param(
        ("",),
        "Model camera names fed by in-process RealSense capture "
        "(empty: none; those cameras then come from pyrealsense2, not from topics).",
        name="realsense.camera_names",
    )
    realsense_serial_numbers: tuple[str, ...] = param(
        ("",),
        "Serial numbers, one per realsense.camera_names entry.",
        name="realsense.serial_numbers",
    )
    realsense_profile: str = param(
        "640x480x30",
        "Colour stream WIDTHxHEIGHTxFPS (rgb8).",
        name="realsense.profile",
    )


Config = TypeVar("Config", NodeParams, InterfaceParams)


def specs(cls: type[NodeParams] | type[InterfaceParams]) -> tuple[Spec, ...]:
    """The parameter declarations of a config class, in field order."""
    out = []
    for f in dataclasses.fields(cls):
        m = f.metadata
        out.append(
            Spec(
                name=m["name"] or f.name,
                default=f.default,
                description=m["description"],
                low=m["low"],
                high=m["high"],
                choices=tuple(m["choices"]),
                dynamic=m["dynamic"],
                tighten=m["tighten"],
                attr=f.name,
            )
        )
    return tuple(out)


NODE_SPECS = specs(NodeParams)
INTERFACE_SPECS = specs(InterfaceParams)
SPECS = NODE_SPECS + INTERFACE_SPECS
SPEC_BY_NAME = {s.name: s for s in SPECS}


def _checked(
    specs_: tuple[Spec, ...], values: Mapping[str, Any], error: type[ParameterError]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs_:
        if spec.name not in values:
            raise error(f"parameter '{spec.name}' is missing")
        out[spec.attr] = check_value(spec, values[spec.name], error)
    return out


def validate(values: Mapping[str, Any], check_model: bool = True) -> NodeParams:
    """Check types, ranges, choices and cross-parameter rules; build :class:`NodeParams`.

    ``check_model=False`` skips the model directory check (the simulated-clock evaluator passes a policy).
    """
    out = _checked(NODE_SPECS, values, ParameterError)
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
    check_model = check_model and out["backend"] != "remote"
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


def parameters_from_yaml(path: str | Path) -> dict[str, Any]:
    """The first ``ros__parameters`` block of a ROS 2 parameter file ({} when it has none)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    for node in data.values() if isinstance(data, dict) else ():
        if isinstance(node, dict) and isinstance(node.get("ros__parameters"), dict):
            return dict(node["ros__parameters"])
    return {}


def defaults(**overrides: Any) -> NodeParams:
    """The default parameters with ``overrides``, validated (no model directory needed)."""
    values = {s.name: s.default for s in NODE_SPECS}
    values.update(overrides)
    return validate(values, check_model=False)


def validate_interfaces(
    values: Mapping[str, Any], error: type[ParameterError] = ParameterError
) -> InterfaceParams:
    """Check the interfaces' parameters (``error`` names the parameter); ``[""]`` lists mean none."""
    out = _checked(INTERFACE_SPECS, values, error)
    out = {k: tuple(v for v in x if v) if isinstance(x, tuple) else x for k, x in out.items()}
    return InterfaceParams(**out)


def check_value(spec: Spec, value: Any, error: type[ParameterError] = ParameterError) -> Any:
    """``value`` in the spec's type (int -> float, list -> tuple), or ``error`` naming the parameter."""
    kind = type(spec.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is tuple:
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


def as_values(config: NodeParams | InterfaceParams) -> dict[str, Any]:
    """``ROS name -> value`` of a config (the inverse of :func:`validate`)."""
    return {spec.name: getattr(config, spec.attr) for spec in specs(type(config))}


def check_update(current: NodeParams, changes: Mapping[str, Any], moving: bool) -> NodeParams:
    """The config after the run-time change ``changes`` (ROS name -> value); ParameterError says why not.

    Refused: unknown and read-only parameters, invalid values, and loosening a safety limit (see
    ``Spec.tighten``) while ``moving`` (the arm is commanded to follow the policy).
    """
    values = as_values(current)
    for name, value in changes.items():
        spec = SPEC_BY_NAME.get(name)
        if spec is None or spec not in NODE_SPECS:
            raise ParameterError(f"parameter '{name}' is not a run-time parameter of the policy node")
        if not spec.dynamic:
            raise ParameterError(
                f"parameter '{name}' is read-only at run time: set it at start (parameter file or -p)"
            )
        new = check_value(spec, value)
        old = values[name]
        looser = (spec.tighten == "lower" and new > old) or (spec.tighten == "higher" and new < old)
        if moving and looser:
            raise ParameterError(
                f"parameter '{name}' = {new} would loosen a safety limit ({old}) while the arm follows the "
                "policy: pause or stop first"
            )
        values[name] = new
    return validate(values)


def declare(node: Any, config: type[Config], error: type[ParameterError] = ParameterError) -> Config:
    """Declare every parameter of ``config`` on ``node`` with a descriptor; return the validated config.

    A parameter the node already has (declared by someone else) is read, not declared again.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    values: dict[str, Any] = {}
    for spec in specs(config):
        if node.has_parameter(spec.name):
            values[spec.name] = node.get_parameter(spec.name).value
            continue
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        # Accept `control_rate: 100` for a double parameter; validation converts and checks the type.
        desc.dynamic_typing = isinstance(spec.default, float)
        if spec.choices:
            desc.additional_constraints = "one of: " + ", ".join(spec.choices)
        # Ranges are checked by validation with a message naming the parameter; they are still advertised.
        if spec.low is not None and spec.high is not None and isinstance(spec.default, float):
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high))
            ]
        elif spec.low is not None and spec.high is not None and isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        try:
            values[spec.name] = node.declare_parameter(spec.name, default, desc).value
        except Exception as exc:  # rclpy: InvalidParameterValueException / type mismatch
            raise error(f"parameter '{spec.name}': {exc}") from exc
    if config is NodeParams:
        return validate(values)  # type: ignore[return-value]
    return validate_interfaces(values, error)  # type: ignore[return-value]


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if isinstance(value, (str, list)) else str(value)
    return "`" + text.replace("|", "\\|") + "`"


def markdown() -> str:
    """``docs/PARAMETERS.md``: one table per parameter group, generated from the declarations."""
    lines = [
        "# Parameters of the policy node",
        "",
        "Generated from `ros2_ws/src/apt_policy/apt_policy/ros/params.py` (the one declaration of every",
        "parameter) by `python -m apt_policy.ros.params > docs/PARAMETERS.md`; a test fails when this file",
        "differs. *run time*: `read-only` parameters are set at start (parameter file or `-p`); `dynamic`",
        "ones may be set with `ros2 param set` while the node runs, validated by the node, which answers a",
        "refusal with the reason; `tighten: lower` / `tighten: higher` safety limits can only be tightened",
        "while the arm follows the policy (loosen them while paused, holding or idle).",
        "",
    ]
    groups = (
        ("Node (`/apt_policy`)", NODE_SPECS),
        ("Interfaces (services, action, gripper, RealSense)", INTERFACE_SPECS),
    )
    for title, group in groups:
        lines += [f"## {title}", "", "| name | type | default | range / choices | run time | description |"]
        lines.append("|---|---|---|---|---|---|")
        for s in group:
            kind = "string[]" if isinstance(s.default, tuple) else type(s.default).__name__
            bounds = ", ".join(s.choices) if s.choices else ""
            if s.low is not None:
                bounds = f"[{s.low}, {s.high}]"
            mode = (
                ("dynamic" + (f", tighten: {s.tighten}" if s.tighten else "")) if s.dynamic else "read-only"
            )
            desc = " ".join(s.description.split()).replace("|", "\\|")
            lines.append(f"| `{s.name}` | {kind} | {_cell(s.default)} | {bounds} | {mode} | {desc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
