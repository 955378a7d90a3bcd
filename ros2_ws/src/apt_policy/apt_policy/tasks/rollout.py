"""Closed-loop rollouts of a policy on the simulated reaching task (ROS-free).

``rollout(policy_fn, scene, instruction)`` renders observations, asks the policy for a chunk of joint
position targets, executes the first ``actions_per_chunk`` of them on a :class:`KinematicArm` at the
control ``dt``, and repeats until the TCP settles within ``SUCCESS_RADIUS`` of the named block or
``max_steps`` control steps have passed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from apt_policy.core.preprocess import resize_rgb
from apt_policy.robots.franka import FR3, RobotProfile
from apt_policy.tasks.camera import PinholeCamera, make_camera
from apt_policy.tasks.expert import ExpertConfig, ReachingExpert, goal_configuration
from apt_policy.tasks.instructions import target_color
from apt_policy.tasks.render import render
from apt_policy.tasks.scene import SUCCESS_RADIUS, Scene, distance_to_block
from apt_policy.tasks.sim import CommandViolations, KinematicArm

__all__ = [
    "NATIVE_SIZE",
    "CameraRig",
    "Observation",
    "PolicyFn",
    "RolloutResult",
    "expert_policy",
    "make_cameras",
    "rollout",
]


@dataclass(frozen=True)
class Observation:
    """What a policy sees each query. ``joint_velocity`` is privileged (for the scripted expert)."""

    images: Mapping[str, np.ndarray]
    state: np.ndarray  # (8,) float32: 7 joint positions + gripper width
    instruction: str
    step: int
    time: float
    joint_velocity: np.ndarray


PolicyFn = Callable[[Observation], np.ndarray]


@dataclass
class RolloutResult:
    """Trajectory and outcome of one rollout."""

    success: bool
    target: str
    final_distance: float  # TCP to the target's reach point (m)
    reached: str | None  # colour of the block whose reach point is nearest at the end, if within radius
    steps: int
    queries: int
    joint_positions: np.ndarray  # (steps + 1, 7)
    tcp_positions: np.ndarray  # (steps + 1, 3)
    commands: np.ndarray  # (steps, 7)
    violations: CommandViolations
    frames: list[dict[str, np.ndarray]] = field(default_factory=list)  # per query, if recorded


NATIVE_SIZE = (480, 640)  # (height, width) of the fake camera / a RealSense colour stream


@dataclass(frozen=True)
class CameraRig:
    """Cameras rendering at ``render_size`` whose frames are resized to ``image_size`` (both (h, w)).

    Rendering at the camera's native 640x480 and shrinking with ``core.preprocess.resize_rgb`` reproduces
    exactly what the policy sees at deployment (fake camera at 640x480, resized by ``core.preprocess``).
    ``render_size=None`` renders directly at ``image_size``: about 2.5x faster, slightly different
    (thin lines and edges do not thin out as they do when a large frame is shrunk).
    """

    cameras: Mapping[str, PinholeCamera]
    image_size: tuple[int, int]

    def render(self, scene: Scene, q: np.ndarray, gripper_width: float) -> dict[str, np.ndarray]:
        h, w = self.image_size
        out = {}
        for name, cam in self.cameras.items():
            img = render(scene, q, cam, gripper_width)
            if img.shape[:2] != (h, w):
                img = resize_rgb(img, (h, w))  # exactly as core.preprocess resizes camera frames
            out[name] = img
        return out


def make_cameras(
    names: Sequence[str],
    image_size: tuple[int, int],
    render_size: tuple[int, int] | None = NATIVE_SIZE,
) -> CameraRig:
    """Preset cameras producing ``image_size = (height, width)`` frames, rendered at ``render_size``."""
    if not names:
        raise ValueError("at least one camera is needed")
    rh, rw = image_size if render_size is None else render_size
    cams = {name: make_camera(name, width=int(rw), height=int(rh)) for name in names}
    return CameraRig(cams, (int(image_size[0]), int(image_size[1])))


def observe(arm: KinematicArm, scene: Scene, rig: CameraRig, instruction: str, step: int) -> Observation:
    images = rig.render(scene, arm.q, arm.gripper_width)
    state = np.append(arm.q, arm.gripper_width).astype(np.float32)
    return Observation(images, state, instruction, step, step * arm.dt, arm.qd.copy())


def expert_policy(
    scene: Scene,
    color: str,
    dt: float,
    horizon: int,
    profile: RobotProfile = FR3,
    config: ExpertConfig | None = None,
) -> PolicyFn:
    """The scripted expert as a ``PolicyFn``: ``(horizon, 8)`` chunks (joints + constant gripper width)."""
    expert = ReachingExpert(goal_configuration(scene.block(color), profile), dt, horizon, profile, config)

    def policy(obs: Observation) -> np.ndarray:
        joints = expert.chunk(obs.state[:7].astype(np.float64), obs.joint_velocity)
        return np.concatenate([joints, np.full((horizon, 1), obs.state[7])], axis=1)

    return policy


def rollout(
    policy_fn: PolicyFn,
    scene: Scene,
    instruction: str,
    *,
    target: str | None = None,
    cameras: Sequence[str] = ("front",),
    image_size: tuple[int, int] = (96, 96),
    render_size: tuple[int, int] | None = NATIVE_SIZE,
    dt: float = 0.1,
    max_steps: int = 60,
    actions_per_chunk: int = 8,
    q0: np.ndarray | None = None,
    profile: RobotProfile = FR3,
    settle_speed: float = 0.05,
    record_frames: bool = False,
) -> RolloutResult:
    """Run ``policy_fn`` closed loop; success = TCP settles within ``SUCCESS_RADIUS`` of ``target``.

    ``target`` defaults to the colour named in ``instruction``. Images are ``image_size`` (h, w), rendered
    at ``render_size`` (see :class:`CameraRig`). The policy's chunk rows are absolute joint
    targets (7 joints, optionally an 8th gripper width column); only the first ``actions_per_chunk`` rows
    of each chunk are executed. The episode ends early once the TCP is within the radius and every joint
    moves slower than ``settle_speed`` rad/s.
    """
    color = target or target_color(instruction)
    if color is None:
        raise ValueError(f"no target colour in {instruction!r}: pass target=")
    scene.block(color)  # KeyError early if the scene lacks it
    if actions_per_chunk < 1 or max_steps < 1:
        raise ValueError("actions_per_chunk and max_steps must be >= 1")
    cams = make_cameras(cameras, image_size, render_size)
    arm = KinematicArm(q0, dt, profile)
    qs, tcps, commands, frames = [arm.q.copy()], [arm.tcp_position], [], []
    step = queries = 0
    while step < max_steps:
        obs = observe(arm, scene, cams, instruction, step)
        if record_frames:
            frames.append(dict(obs.images))
        chunk = np.asarray(policy_fn(obs), dtype=np.float64)
        queries += 1
        if chunk.ndim != 2 or chunk.shape[1] < 7 or chunk.shape[0] < 1:
            raise ValueError(f"policy returned a chunk of shape {chunk.shape}; expected (horizon, >= 7)")
        settled = False
        for action in chunk[:actions_per_chunk]:
            arm.command(action[:7], float(action[7]) if action.shape[0] > 7 else None)
            step += 1
            qs.append(arm.q.copy())
            tcps.append(arm.tcp_position)
            commands.append(action[:7].copy())
            near = distance_to_block(tcps[-1], scene.block(color)) < SUCCESS_RADIUS
            if near and np.max(np.abs(arm.qd)) < settle_speed:
                settled = True
                break
            if step >= max_steps:
                break
        if settled:
            break
    final_tcp = tcps[-1]
    distances = {b.color: distance_to_block(final_tcp, b) for b in scene.blocks}
    nearest = min(distances, key=distances.__getitem__)
    reached = nearest if distances[nearest] < SUCCESS_RADIUS else None
    return RolloutResult(
        success=distances[color] < SUCCESS_RADIUS,
        target=color,
        final_distance=distances[color],
        reached=reached,
        steps=step,
        queries=queries,
        joint_positions=np.array(qs),
        tcp_positions=np.array(tcps),
        commands=np.array(commands).reshape(-1, 7),
        violations=arm.violations,
        frames=frames,
    )
