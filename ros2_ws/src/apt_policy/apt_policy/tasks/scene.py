"""The reaching scene: a table at z = 0 (the robot base frame), three coloured cubes on it.

Coordinates are the robot base frame (metres, x forward, z up); the arm is mounted on the table top.
A scene is plain data, reproducible from a seed, and round-trips through JSON (``to_dict``/``from_dict``)
so the fake camera and demos can place blocks by message.

Reach point: the point ``REACH_HEIGHT`` above the centre of a block's top face, i.e.
``(x, y, BLOCK_SIZE + REACH_HEIGHT)``. The expert drives the hand TCP (between the fingertips) there with
the tool pointing down; an episode succeeds when the TCP ends within ``SUCCESS_RADIUS`` of the named
block's reach point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from apt_policy.robots.franka import FR3, RobotProfile, inverse_kinematics

__all__ = [
    "BLOCK_SIZE",
    "COLORS",
    "MIN_BLOCK_SPACING",
    "REACH_HEIGHT",
    "SUCCESS_RADIUS",
    "WORKSPACE",
    "Block",
    "Scene",
    "distance_to_block",
    "is_success",
    "sample_scene",
]

BLOCK_SIZE = 0.05  # cube edge (m)
REACH_HEIGHT = 0.02  # reach point above the top face (m): the fingertips hover, they do not push
SUCCESS_RADIUS = 0.03  # TCP within this distance of the reach point = success (m)
MIN_BLOCK_SPACING = 0.10  # centre-to-centre distance between blocks (m): targets are unambiguous
WORKSPACE = {"x": (0.35, 0.62), "y": (-0.22, 0.22)}  # where block centres are sampled (m)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "green": (40, 165, 65),
    "blue": (35, 75, 210),
}


@dataclass(frozen=True)
class Block:
    """One cube resting on the table: colour name, centre ``(x, y)`` and yaw about z."""

    color: str
    x: float
    y: float
    yaw: float = 0.0

    @property
    def center(self) -> np.ndarray:
        return np.array([self.x, self.y, BLOCK_SIZE / 2])

    @property
    def reach_point(self) -> np.ndarray:
        return np.array([self.x, self.y, BLOCK_SIZE + REACH_HEIGHT])

    def corners(self) -> np.ndarray:
        """The 8 cube corners ``(8, 3)``: index bits (x, y, z) = (i & 1, i & 2, i & 4)."""
        h = BLOCK_SIZE / 2
        local = np.array(
            [[(i & 1) * 2 - 1, ((i >> 1) & 1) * 2 - 1, ((i >> 2) & 1) * 2 - 1] for i in range(8)]
        )
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return self.center + (local * h) @ rot.T


@dataclass(frozen=True)
class Scene:
    """Blocks on the table (one per colour) and the seed that made them (``None`` if placed by hand)."""

    blocks: tuple[Block, ...]
    seed: int | None = None

    def __post_init__(self) -> None:
        colors = [b.color for b in self.blocks]
        if len(set(colors)) != len(colors):
            raise ValueError(f"one block per colour, got {colors}")
        for b in self.blocks:
            if b.color not in COLORS:
                raise ValueError(f"unknown block colour {b.color!r}; known: {sorted(COLORS)}")
            if not all(math.isfinite(v) for v in (b.x, b.y, b.yaw)):
                raise ValueError(f"block {b.color} has a non-finite pose")

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(b.color for b in self.blocks)

    def block(self, color: str) -> Block:
        for b in self.blocks:
            if b.color == color:
                return b
        raise KeyError(f"no {color!r} block in this scene (has {list(self.colors)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "blocks": [{"color": b.color, "x": b.x, "y": b.y, "yaw": b.yaw} for b in self.blocks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scene:
        """Inverse of :meth:`to_dict`; ``{"seed": n}`` alone samples the scene of that seed."""
        if "blocks" not in data:
            if data.get("seed") is None:
                raise ValueError("scene needs 'blocks' or a 'seed'")
            return sample_scene(int(data["seed"]))
        blocks = []
        for item in data["blocks"]:
            unknown = set(item) - {"color", "x", "y", "yaw"}
            if unknown:
                raise ValueError(f"unknown block fields {sorted(unknown)}")
            blocks.append(
                Block(str(item["color"]), float(item["x"]), float(item["y"]), float(item.get("yaw", 0.0)))
            )
        seed = data.get("seed")
        return cls(tuple(blocks), None if seed is None else int(seed))


def sample_scene(
    seed: int | np.random.Generator,
    colors: Sequence[str] = tuple(COLORS),
    profile: RobotProfile = FR3,
    max_tries: int = 1000,
) -> Scene:
    """Random non-overlapping blocks whose reach points the arm can reach tool-down (IK-checked)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    seed_value = None if isinstance(seed, np.random.Generator) else int(seed)
    blocks: list[Block] = []
    for color in colors:
        for _ in range(max_tries):
            x = float(rng.uniform(*WORKSPACE["x"]))
            y = float(rng.uniform(*WORKSPACE["y"]))
            yaw = float(rng.uniform(-math.pi / 4, math.pi / 4))
            if any(math.hypot(x - b.x, y - b.y) < MIN_BLOCK_SPACING for b in blocks):
                continue
            candidate = Block(color, x, y, yaw)
            if inverse_kinematics(profile, candidate.reach_point, tool_down=True).success:
                blocks.append(candidate)
                break
        else:
            raise RuntimeError(f"could not place the {color} block in {max_tries} tries")
    return Scene(tuple(blocks), seed_value)


def distance_to_block(tcp_position: np.ndarray, block: Block) -> float:
    """Distance (m) from a TCP position to the block's reach point."""
    return float(np.linalg.norm(np.asarray(tcp_position, dtype=np.float64)[:3] - block.reach_point))


def is_success(tcp_position: np.ndarray, scene: Scene, color: str, radius: float = SUCCESS_RADIUS) -> bool:
    """True when the TCP is within ``radius`` of the reach point of the ``color`` block."""
    return distance_to_block(tcp_position, scene.block(color)) < radius
