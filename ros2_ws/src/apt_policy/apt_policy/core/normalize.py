"""State/action normalisation with statistics stored in the bundle's ``norm_stats.json`` (numpy only).

Modes:
  * ``mean_std``: x -> (x - mean) / std
  * ``quantile``: x -> 2 (x - q01) / (q99 - q01) - 1, so the 1st..99th percentile maps to [-1, 1]
    (values outside are NOT clipped: clipping would hide a state the policy never saw).
Dimensions with (near) zero spread (a constant gripper, say) are divided by ``EPS`` floor instead of 0,
so a constant dimension normalises to 0 and un-normalises back to its constant.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EPS = 1e-6
KEYS = ("state", "actions")


class NormStatsError(ValueError):
    """norm_stats.json is missing a key, has the wrong dimension or holds non-finite numbers."""


@dataclass(frozen=True)
class Stats:
    """Per-dimension statistics of one quantity (state or actions)."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray

    @classmethod
    def from_samples(cls, x: np.ndarray) -> Stats:
        """Statistics of samples ``x`` [N, ..., dim] over every axis but the last."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
        if x.shape[0] == 0:
            raise NormStatsError("cannot compute statistics of zero samples")
        return cls(
            mean=x.mean(0),
            std=x.std(0),
            q01=np.quantile(x, 0.01, axis=0),
            q99=np.quantile(x, 0.99, axis=0),
        )

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [float(v) for v in getattr(self, k)] for k in ("mean", "std", "q01", "q99")}

    @classmethod
    def from_dict(cls, data: Mapping[str, object], name: str) -> Stats:
        arrays = {}
        for key in ("mean", "std", "q01", "q99"):
            if key not in data:
                raise NormStatsError(f"norm_stats.{name}: missing '{key}'")
            try:
                arr = np.asarray(data[key], dtype=np.float64)
            except (TypeError, ValueError):
                arr = np.array([np.nan])  # not numbers: refused below
            # float32 is what the graphs compute in: a statistic beyond its range would become inf there
            if arr.ndim != 1 or arr.size == 0 or not np.all(np.abs(arr) < np.finfo(np.float32).max):
                raise NormStatsError(f"norm_stats.{name}.{key}: expected a 1-D list of finite numbers")
            arrays[key] = arr
        dims = {k: a.shape[0] for k, a in arrays.items()}
        if len(set(dims.values())) != 1:
            raise NormStatsError(f"norm_stats.{name}: lengths differ {dims}")
        if np.any(arrays["std"] < 0):
            raise NormStatsError(f"norm_stats.{name}.std: negative entries")
        return cls(**arrays)


class Normalizer:
    """Normalises state and actions, and un-normalises actions, with one mode for both."""

    def __init__(self, state: Stats, actions: Stats, mode: str = "quantile") -> None:
        if mode not in ("mean_std", "quantile"):
            raise NormStatsError(f"normalization mode {mode!r}: expected 'mean_std' or 'quantile'")
        self.mode = mode
        self.state = state
        self.actions = actions
        self._state_affine = self._affine(state)
        self._action_affine = self._affine(actions)

    def _affine(self, s: Stats) -> tuple[np.ndarray, np.ndarray]:
        """(offset, scale) with normalised = (x - offset) / scale."""
        if self.mode == "mean_std":
            return s.mean.astype(np.float32), np.maximum(s.std, EPS).astype(np.float32)
        centre = (s.q99 + s.q01) / 2.0
        half_range = np.maximum((s.q99 - s.q01) / 2.0, EPS)
        return centre.astype(np.float32), half_range.astype(np.float32)

    # ------------------------------------------------------------------ apply
    def normalize_state(self, x: np.ndarray) -> np.ndarray:
        return _apply(x, *self._state_affine, "state")

    def normalize_actions(self, x: np.ndarray) -> np.ndarray:
        return _apply(x, *self._action_affine, "actions")

    def unnormalize_actions(self, y: np.ndarray) -> np.ndarray:
        offset, scale = self._action_affine
        y = np.asarray(y, dtype=np.float32)
        if y.shape[-1] != offset.shape[0]:
            raise NormStatsError(f"actions have dim {y.shape[-1]}, stats have {offset.shape[0]}")
        return y * scale + offset

    def unnormalize_state(self, y: np.ndarray) -> np.ndarray:
        offset, scale = self._state_affine
        return np.asarray(y, dtype=np.float32) * scale + offset

    # -------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "state": self.state.to_dict(), "actions": self.actions.to_dict()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: Mapping[str, object], mode: str | None = None) -> Normalizer:
        for key in KEYS:
            if key not in data or not isinstance(data[key], Mapping):
                raise NormStatsError(f"norm_stats: missing '{key}' statistics")
        file_mode = data.get("mode")
        if mode is not None and file_mode is not None and file_mode != mode:
            raise NormStatsError(f"norm_stats mode {file_mode!r} differs from the config's {mode!r}")
        return cls(
            Stats.from_dict(data["state"], "state"),  # type: ignore[arg-type]
            Stats.from_dict(data["actions"], "actions"),  # type: ignore[arg-type]
            mode=mode or str(file_mode or "quantile"),
        )

    @classmethod
    def load(cls, path: str | Path, mode: str | None = None) -> Normalizer:
        path = Path(path)
        if not path.is_file():
            raise NormStatsError(f"norm stats file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise NormStatsError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, mode)

    @classmethod
    def fit(cls, states: np.ndarray, actions: np.ndarray, mode: str = "quantile") -> Normalizer:
        """Statistics from training data: states [N, state_dim], actions [N, horizon, action_dim]."""
        return cls(Stats.from_samples(states), Stats.from_samples(actions), mode)


def _apply(x: np.ndarray, offset: np.ndarray, scale: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] != offset.shape[0]:
        raise NormStatsError(f"{name} has dim {x.shape[-1]}, norm stats have {offset.shape[0]}")
    return (x - offset) / scale
