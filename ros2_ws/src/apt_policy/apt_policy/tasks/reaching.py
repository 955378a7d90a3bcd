"""Instruction-conditioned reaching with a simulated FR3: the public face of ``apt_policy.tasks``.

Pieces (each its own module):

* ``scene``        – table, three coloured cubes, reach point, success metric (``SUCCESS_RADIUS`` = 3 cm)
* ``camera``       – pinhole cameras at fixed poses (``make_camera(name, width, height)``)
* ``render``       – OpenCV renderer: RGB uint8 at any resolution
* ``instructions`` – training templates and the held-out phrasing ``HELD_OUT_TEMPLATE``
* ``expert``       – scripted joint-space expert from numeric IK, within velocity/acceleration limits
* ``sim``          – kinematic arm tracking joint targets within velocity limits
* ``rollout``      – closed-loop rollout of any ``policy_fn(Observation) -> chunk``
* ``dataset``      – Stage-1 (no language) and Stage-2 (labelled) demonstration datasets
* ``evaluation``   – success rates with training / held-out phrasings

See docs/SIMULATION.md.
"""

from __future__ import annotations

from apt_policy.tasks.camera import CAMERA_PRESETS, PinholeCamera, make_camera
from apt_policy.tasks.dataset import (
    DemoConfig,
    DemoDataset,
    action_names,
    generate_dataset,
    generate_episode,
    scene_of_episode,
    state_names,
)
from apt_policy.tasks.evaluation import INSTRUCTION_MODES, EvaluationResult, evaluate, held_out_gap
from apt_policy.tasks.expert import ExpertConfig, ReachingExpert, goal_configuration
from apt_policy.tasks.instructions import (
    HELD_OUT_INSTRUCTIONS,
    HELD_OUT_TEMPLATE,
    TRAIN_TEMPLATES,
    make_instruction,
    target_color,
)
from apt_policy.tasks.render import block_pixel, render
from apt_policy.tasks.rollout import (
    NATIVE_SIZE,
    CameraRig,
    Observation,
    PolicyFn,
    RolloutResult,
    expert_policy,
    make_cameras,
    rollout,
)
from apt_policy.tasks.scene import (
    BLOCK_SIZE,
    COLORS,
    REACH_HEIGHT,
    SUCCESS_RADIUS,
    Block,
    Scene,
    distance_to_block,
    is_success,
    sample_scene,
)
from apt_policy.tasks.sim import CommandViolations, KinematicArm

__all__ = [
    "BLOCK_SIZE",
    "CAMERA_PRESETS",
    "COLORS",
    "HELD_OUT_INSTRUCTIONS",
    "HELD_OUT_TEMPLATE",
    "INSTRUCTION_MODES",
    "NATIVE_SIZE",
    "REACH_HEIGHT",
    "SUCCESS_RADIUS",
    "TRAIN_TEMPLATES",
    "Block",
    "CameraRig",
    "CommandViolations",
    "DemoConfig",
    "DemoDataset",
    "EvaluationResult",
    "ExpertConfig",
    "KinematicArm",
    "Observation",
    "PinholeCamera",
    "PolicyFn",
    "ReachingExpert",
    "RolloutResult",
    "Scene",
    "action_names",
    "block_pixel",
    "distance_to_block",
    "evaluate",
    "expert_policy",
    "generate_dataset",
    "generate_episode",
    "goal_configuration",
    "held_out_gap",
    "is_success",
    "make_camera",
    "make_cameras",
    "make_instruction",
    "render",
    "rollout",
    "sample_scene",
    "scene_of_episode",
    "state_names",
    "target_color",
]
