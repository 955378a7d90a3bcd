"""Build the control core (controller, rate loop) from the node's parameters and the loaded policy's info.

Plain translation, no decisions: every check is made by the control core's own constructors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apt_policy.control.blending import BlendConfig
from apt_policy.control.chunking import ChunkingConfig, ExecutionPlan, resolve_strategy
from apt_policy.control.controller import Controller, ControllerConfig
from apt_policy.control.limits import JointLimits
from apt_policy.control.safety import SafetyConfig
from apt_policy.control.semantics import ActionLayout
from apt_policy.control.watchdog import WatchdogConfig
from apt_policy.robots.franka import RobotProfile, get_profile
from apt_policy.ros.params import NodeParams, ParameterError
from apt_policy.runtime.policy import PolicyInfo

OUTPUTS = {"joint_trajectory": "trajectory", "joint_position": "position", "none": "none"}


def execution_plan(p: NodeParams, info: PolicyInfo) -> ExecutionPlan:
    """``chunk_execution`` for this model: rtc only when it takes a prefix (``PolicyInfo.rtc_inputs``)."""
    return resolve_strategy(p.chunk_execution, bool(info.rtc_inputs), fallback=p.blending)


def build_controller(p: NodeParams, info: PolicyInfo) -> tuple[Controller, RobotProfile]:
    """The controller for robot ``p.robot`` executing chunks of the policy described by ``info``."""
    profile = get_profile(p.robot)
    config, layout = controller_config(p, info, profile)
    try:
        controller = Controller(JointLimits.from_profile(profile), layout, config)
    except ValueError as exc:
        raise ParameterError(f"control configuration: {exc}") from exc
    return controller, profile


def controller_config(
    p: NodeParams, info: PolicyInfo, profile: RobotProfile
) -> tuple[ControllerConfig, ActionLayout]:
    """The controller's configuration and action layout from the parameters (ParameterError if invalid)."""
    dof = profile.dof
    arm_names = tuple(info.action_names[:dof])
    if arm_names != tuple(profile.joint_names):
        raise ParameterError(
            f"parameter 'robot' = {p.robot!r}: the model's first {dof} actions are {list(arm_names)}, "
            f"expected the joints {list(profile.joint_names)}"
        )
    threshold = info.horizon // 2 if p.chunk_request_threshold < 0 else p.chunk_request_threshold
    if threshold >= info.horizon:
        raise ParameterError(
            f"parameter 'chunk_request_threshold' = {p.chunk_request_threshold} must be below the model's "
            f"horizon {info.horizon}"
        )
    try:
        plan = execution_plan(p, info)
        layout = ActionLayout.from_config(
            info.action_semantics,
            dof,
            max_width=profile.max_gripper_width,
            open_width=profile.max_gripper_width,
        )
        if info.action_dim < layout.min_action_dim:
            raise ValueError(
                f"model actions have {info.action_dim} values, the semantics need {layout.min_action_dim}"
            )
        config = ControllerConfig(
            control_dt=p.period_s,
            chunk_dt=float(info.dt),
            request_when_left=threshold,
            max_tracking_error=p.max_tracking_error,
            lookahead_points=p.lookahead_points,
            output=OUTPUTS[p.output_mode],
            stamped=p.trajectory_stamp == "tick",
            commit_points=p.commit_points if p.trajectory_stamp == "tick" else 0,
            blend=BlendConfig(
                mode=plan.blend_mode,
                crossfade_steps=p.blending_steps,
                crossfade_shape=p.blending_shape,
                ensemble_decay=p.ensemble_m,
                rtc_takeover=p.rtc_takeover_blend,
            ),
            chunking=ChunkingConfig(
                rtc=plan.rtc,
                delay_quantile=p.rtc_delay_quantile,
                trained_max_delay=int(info.rtc_max_delay),
                max_prefix=p.rtc_prefix_max,
                overlap=switch_overlap(p, plan),
            ),
            safety=SafetyConfig(
                margin=p.position_margin,
                velocity_scale=p.velocity_scale,
                acceleration_scale=p.acceleration_scale,
                max_deviation=p.max_deviation,
            ),
            # The one staleness authority (the node's observation buffer asks it too). The latency bound
            # covers a frame up to max_image_age old at the start plus an inference up to the timeout.
            watchdog=WatchdogConfig(
                max_state_age=p.max_state_age,
                max_camera_age=p.max_image_age,
                max_gripper_age=p.max_gripper_age,
                max_inference_latency=p.inference_timeout + p.max_image_age,
                inference_timeout=p.inference_timeout,
            ),
        )
    except ValueError as exc:
        raise ParameterError(f"control configuration: {exc}") from exc
    return config, layout


def switch_overlap(p: NodeParams, plan: ExecutionPlan) -> int:
    """Actions the executing chunk must still have when the next arrives (``ChunkingConfig.overlap``):
    ``blending_steps`` when switches are cross-faded (the crossfade strategy; RTC whose chunks are blended
    in: anchored by ``rtc_prefix_max`` or ``rtc_takeover_blend``), else 1."""
    if plan.blend_mode != "crossfade":
        return 1
    blended = not plan.rtc or p.rtc_prefix_max > 0 or p.rtc_takeover_blend
    return int(p.blending_steps) if blended else 1


def build_loop(
    p: NodeParams,
    tick: Callable[[float, float], Callable[[], None] | None],
    on_error: Callable[[BaseException], None],
    on_stall: Callable[[Any], None] | None = None,
) -> Any:
    """The control core's fixed-rate loop calling ``tick(started, deadline)`` (monotonic s) every
    ``1/control_rate`` s, ``publish_lead`` periods before each deadline; the send function ``tick`` returns
    is called at the deadline. ``on_stall(rate_loop.Stall)`` for a tick over 5 periods late."""
    from apt_policy.control.rate_loop import FixedRateLoop, TickInfo

    def callback(info: TickInfo) -> Callable[[], None] | None:
        return tick(info.started, info.deadline)

    return FixedRateLoop(
        p.period_s,
        callback,
        on_error=on_error,
        name="apt-stream",
        lead=p.publish_lead * p.period_s,
        on_stall=on_stall,
    )
