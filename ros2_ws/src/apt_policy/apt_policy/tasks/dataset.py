"""Demonstration datasets for the two APT training stages, generated from the scripted expert.

Each control step of an expert episode is one sample: the rendered images of every camera, the state
(7 joint positions + gripper width), the instruction, and the expert's chunk of the next ``horizon``
absolute targets (7 joint positions + gripper width) from that state.

* Stage 1 (``stage=1``): no language (instruction ``""``); the expert reaches a random block.
* Stage 2 (``stage=2``): the instruction names the target with a random training template.

Episodes start at the ready pose perturbed by up to ``start_noise`` rad per joint; with
``execution_noise`` > 0 the executed targets are perturbed (labels stay clean) so the data also covers
recovering from small tracking errors, and with ``kick_probability`` > 0 a step's target is, that often,
displaced by ``kick_noise`` rad per joint more (DART-style: the arm lands several cm off, so the data
shows the expert returning from the offsets a policy's own errors produce).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from apt_policy.core.start_views import start_source
from apt_policy.robots.franka import FR3, RobotProfile
from apt_policy.tasks.expert import ExpertConfig, ReachingExpert, goal_configuration
from apt_policy.tasks.instructions import make_instruction
from apt_policy.tasks.rollout import NATIVE_SIZE, make_cameras, observe
from apt_policy.tasks.scene import Scene, sample_scene
from apt_policy.tasks.sim import KinematicArm

__all__ = [
    "DemoConfig",
    "DemoDataset",
    "action_names",
    "cached_dataset",
    "default_workers",
    "episode_seed",
    "executed_target",
    "generate_dataset",
    "generate_episode",
    "state_names",
    "with_start_views",
]


def state_names(profile: RobotProfile = FR3) -> tuple[str, ...]:
    return (*profile.joint_names, "gripper_width")


def action_names(profile: RobotProfile = FR3) -> tuple[str, ...]:
    return (*profile.joint_names, "gripper_width")


@dataclass(frozen=True)
class DemoConfig:
    """How demonstrations are generated (``image_size`` is ``(height, width)``)."""

    cameras: tuple[str, ...] = ("front",)
    image_size: tuple[int, int] = (96, 96)
    render_size: tuple[int, int] | None = NATIVE_SIZE  # None: render at image_size (faster, approximate)
    dt: float = 0.1
    horizon: int = 16
    steps_per_episode: int = 32
    start_noise: float = 0.15
    execution_noise: float = 0.0
    kick_probability: float = 0.0
    kick_noise: float = 0.0
    expert: ExpertConfig = field(default_factory=ExpertConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        if self.render_size is not None:
            object.__setattr__(self, "render_size", tuple(int(v) for v in self.render_size))
        if not self.cameras or self.horizon < 1 or self.steps_per_episode < 1 or self.dt <= 0:
            raise ValueError(f"invalid demo config {self}")
        if self.start_noise < 0 or self.execution_noise < 0 or self.kick_noise < 0:
            raise ValueError("noise magnitudes must be >= 0")
        if not 0.0 <= self.kick_probability <= 1.0:
            raise ValueError(f"kick_probability must be in [0, 1], got {self.kick_probability}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def executed_target(
    joints: np.ndarray, rng: np.random.Generator, config: DemoConfig, profile: RobotProfile = FR3
) -> np.ndarray:
    """What an expert episode commands for one step: the expert's next target ``joints`` (7,) plus the
    execution noise and, with probability ``kick_probability``, a kick; clipped to the joint limits.
    Draws nothing from ``rng`` for a noise that is off, so data without them is unchanged."""
    target = np.asarray(joints, dtype=np.float64)
    if config.execution_noise:
        target = target + rng.normal(0.0, config.execution_noise, target.shape)
    if config.kick_probability and rng.random() < config.kick_probability:
        target = target + rng.normal(0.0, config.kick_noise, target.shape)
    return profile.clip_position(target)


def generate_episode(
    seed: int, stage: int, config: DemoConfig = DemoConfig(), profile: RobotProfile = FR3
) -> Iterator[dict[str, Any]]:
    """Samples of one expert episode; scene, target, phrasing and start pose all follow from ``seed``."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng)
    color = scene.colors[int(rng.integers(len(scene.colors)))]
    instruction = make_instruction(color, rng) if stage == 2 else ""
    expert = ReachingExpert(
        goal_configuration(scene.block(color), profile), config.dt, config.horizon, profile, config.expert
    )
    q0 = profile.clip_position(profile.ready_pose + rng.uniform(-1, 1, 7) * config.start_noise, 0.05)
    arm = KinematicArm(q0, config.dt, profile)
    cams = make_cameras(config.cameras, config.image_size, config.render_size)
    for step in range(config.steps_per_episode):
        obs = observe(arm, scene, cams, instruction, step)
        joints = expert.chunk(arm.q, arm.qd)
        actions = np.concatenate([joints, np.full((config.horizon, 1), arm.gripper_width)], axis=1)
        yield {
            "images": obs.images,
            "state": obs.state,
            "instruction": instruction,
            "actions": actions.astype(np.float32),
            "target": color,
            "scene": scene,
            "step": step,
        }
        arm.command(executed_target(joints[0], rng, config, profile))


@dataclass
class DemoDataset:
    """Arrays of samples: ``images[camera]`` (N, H, W, 3) uint8, ``states`` (N, 8) f32, ``actions``
    (N, horizon, 8) f32, ``instructions``/``targets`` (N,) str, ``episode``/``step`` (N,) int."""

    images: dict[str, np.ndarray]
    states: np.ndarray
    actions: np.ndarray
    instructions: np.ndarray
    targets: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    stage: int
    config: dict[str, Any]
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def select(self, index: np.ndarray) -> DemoDataset:
        """The samples ``index`` picks (a boolean mask or indices, in that order), every array alike."""
        return dataclasses.replace(
            self,
            images={k: v[index] for k, v in self.images.items()},
            states=self.states[index],
            actions=self.actions[index],
            instructions=self.instructions[index],
            targets=self.targets[index],
            episode=self.episode[index],
            step=self.step[index],
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "images": {name: frames[i] for name, frames in self.images.items()},
            "state": self.states[i],
            "instruction": str(self.instructions[i]),
            "actions": self.actions[i],
        }

    def save(self, path: str | Path) -> Path:
        """Write an uncompressed ``.npz`` (fast to load) with the metadata as JSON."""
        path = Path(path)
        meta = {
            "stage": self.stage,
            "config": self.config,
            "state_names": list(self.state_names),
            "action_names": list(self.action_names),
            "cameras": list(self.images),
        }
        arrays = {f"image_{name}": frames for name, frames in self.images.items()}
        np.savez(
            path,
            states=self.states,
            actions=self.actions,
            instructions=self.instructions.astype(str),
            targets=self.targets.astype(str),
            episode=self.episode,
            step=self.step,
            meta=np.array(json.dumps(meta)),
            **arrays,
        )
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> DemoDataset:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return cls(
                images={name: data[f"image_{name}"] for name in meta["cameras"]},
                states=data["states"],
                actions=data["actions"],
                instructions=data["instructions"],
                targets=data["targets"],
                episode=data["episode"],
                step=data["step"],
                stage=int(meta["stage"]),
                config=meta["config"],
                state_names=tuple(meta["state_names"]),
                action_names=tuple(meta["action_names"]),
            )


def with_start_views(data: DemoDataset, cameras: Sequence[str]) -> DemoDataset:
    """``data`` plus an image array for every start view among ``cameras`` (``core.start_views``): each
    sample's ``<camera>@start`` is its episode's first frame of ``<camera>`` (the lowest step the data holds
    of that episode), what the node holds for the episode's later predictions. Other arrays are shared."""
    views = {c: s for c in cameras if (s := start_source(c)) is not None}
    missing = sorted({s for s in views.values() if s not in data.images})
    if missing:
        raise ValueError(f"start views of {missing}: the data has no such camera ({list(data.images)})")
    if not views:
        return data
    first: dict[int, int] = {}
    for i in np.lexsort((data.step, data.episode)):  # by episode, then step: the first seen is the start
        first.setdefault(int(data.episode[i]), int(i))
    start = np.fromiter((first[int(e)] for e in data.episode), np.int64, len(data.episode))
    images = dict(data.images)
    images.update({view: data.images[source][start] for view, source in views.items()})
    return dataclasses.replace(data, images=images)


def episode_seed(dataset_seed: int, episode: int) -> int:
    """The seed of episode ``episode`` of ``generate_dataset(..., seed=dataset_seed)``."""
    return dataset_seed * 1_000_003 + episode


def default_workers(limit: int = 8) -> int:
    """Processes for rendering demonstrations: the CPUs this process may run on, at most ``limit``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(limit, cpus))


def _episode_block(
    episodes: Sequence[int], stage: int, config: DemoConfig, seed: int, profile: RobotProfile
) -> dict[str, Any]:
    """The samples of ``episodes`` as arrays (one worker's share of :func:`generate_dataset`)."""
    n = len(episodes) * config.steps_per_episode
    h, w = config.image_size
    images = {cam: np.empty((n, h, w, 3), np.uint8) for cam in config.cameras}
    states = np.empty((n, 8), np.float32)
    actions = np.empty((n, config.horizon, 8), np.float32)
    instructions: list[str] = []
    targets: list[str] = []
    episode = np.empty(n, np.int64)
    steps = np.empty(n, np.int64)
    i = 0
    for e in episodes:
        for sample in generate_episode(episode_seed(seed, e), stage, config, profile):
            for cam in config.cameras:
                images[cam][i] = sample["images"][cam]
            states[i], actions[i] = sample["state"], sample["actions"]
            instructions.append(sample["instruction"])
            targets.append(sample["target"])
            episode[i], steps[i] = e, sample["step"]
            i += 1
    return {
        "images": images,
        "states": states,
        "actions": actions,
        "instructions": instructions,
        "targets": targets,
        "episode": episode,
        "step": steps,
    }


def generate_dataset(
    num_episodes: int,
    stage: int,
    config: DemoConfig = DemoConfig(),
    seed: int = 0,
    profile: RobotProfile = FR3,
    progress: bool = True,
    workers: int = 1,
) -> DemoDataset:
    """``num_episodes`` expert episodes (episode ``i`` uses ``episode_seed(seed, i)``) as one dataset.

    ``workers`` > 1 renders blocks of episodes in that many processes; every episode follows from its own
    seed, so the dataset is the same for any number of workers."""
    if num_episodes < 1:
        raise ValueError("num_episodes must be >= 1")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    shares = [range(b, min(b + 10, num_episodes)) for b in range(0, num_episodes, 10)]
    n = num_episodes * config.steps_per_episode
    h, w = config.image_size
    out: dict[str, Any] = {
        "images": {cam: np.empty((n, h, w, 3), np.uint8) for cam in config.cameras},
        "states": np.empty((n, 8), np.float32),
        "actions": np.empty((n, config.horizon, 8), np.float32),
        "instructions": [],
        "targets": [],
        "episode": np.empty(n, np.int64),
        "step": np.empty(n, np.int64),
    }
    done = 0

    def take(block: dict[str, Any]) -> None:  # copy one share in (the shares arrive in order)
        nonlocal done
        rows = slice(done, done + len(block["states"]))
        for cam in config.cameras:
            out["images"][cam][rows] = block["images"][cam]
        for key in ("states", "actions", "episode", "step"):
            out[key][rows] = block[key]
        out["instructions"] += block["instructions"]
        out["targets"] += block["targets"]
        done = rows.stop

    with tqdm(total=num_episodes, desc=f"stage-{stage} demos", unit="ep", disable=not progress) as bar:
        if workers == 1:
            for share in shares:
                take(_episode_block(share, stage, config, seed, profile))
                bar.update(len(share))
        else:
            # spawn, not fork: the caller may already run torch's or OpenCV's thread pools
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(shares)), mp_context=context) as pool:
                futures = [pool.submit(_episode_block, sh, stage, config, seed, profile) for sh in shares]
                for future, share in zip(futures, shares, strict=True):
                    take(future.result())
                    bar.update(len(share))
    return DemoDataset(
        images=out["images"],
        states=out["states"],
        actions=out["actions"],
        instructions=np.array(out["instructions"], dtype=str),
        targets=np.array(out["targets"], dtype=str),
        episode=out["episode"],
        step=out["step"],
        stage=stage,
        config=config.to_dict(),
        state_names=state_names(profile),
        action_names=action_names(profile),
    )


def cached_dataset(
    directories: Sequence[str | Path],
    num_episodes: int,
    config: DemoConfig,
    seed: int,
    *,
    progress: bool = True,
    workers: int = 1,
) -> DemoDataset:
    """:func:`generate_dataset` (stage 2) saved as ``demos.npz`` with a ``demos.key`` naming its arguments.

    Loaded from the first of ``directories`` whose key matches (so several demos can share one copy on
    disk), else generated and saved in the last of them."""
    if not directories:
        raise ValueError("cached_dataset needs at least one directory")
    key = json.dumps([config.to_dict(), num_episodes, seed], sort_keys=True, default=str)
    for root in map(Path, directories):
        path, key_path = root / "demos.npz", root / "demos.key"
        if path.is_file() and key_path.is_file() and key_path.read_text() == key:
            return DemoDataset.load(path)
    root = Path(directories[-1])
    root.mkdir(parents=True, exist_ok=True)
    data = generate_dataset(num_episodes, 2, config, seed=seed, progress=progress, workers=workers)
    data.save(root / "demos.npz")
    (root / "demos.key").write_text(key)
    return data


def scene_of_episode(seed: int) -> Scene:
    """The scene used by :func:`generate_episode` for ``seed`` (for evaluating on training scenes)."""
    return sample_scene(np.random.default_rng(seed))
