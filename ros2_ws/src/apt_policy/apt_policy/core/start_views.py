"""Start views: a model camera named ``<camera>@start`` sees ``<camera>``'s frame from the episode's start.

A policy whose target can be hidden by the arm once it arrives (the gripper over the block) loses where it
was going. A start view is the memory for that: the frame ``<camera>`` gave the episode's first prediction,
held for every later prediction of the episode. "Episode" is the stateful contract's
(``runtime.policy.History``, docs/ARCHITECTURE.md): it begins where the executed-step history begins again
(a new instruction, a hold, activation), so the node, the evaluators and the training data agree on it.

A start view is an ordinary camera to the model, its bundle and its exports (its own image input); only who
fills it differs: the node and the evaluators (:class:`StartViews`), the training data (the episode's first
frame, ``tasks.dataset.with_start_views``). Plain numpy, no ROS, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

START_SUFFIX = "@start"

__all__ = ["START_SUFFIX", "StartViews", "check_cameras", "live_cameras", "start_source"]


def start_source(camera: str) -> str | None:
    """The live camera a start view shows (``"front@start"`` -> ``"front"``); None for a live camera."""
    return camera[: -len(START_SUFFIX)] if camera.endswith(START_SUFFIX) else None


def live_cameras(cameras: Sequence[str]) -> tuple[str, ...]:
    """The cameras that need a topic or a renderer: every camera but the start views, in order."""
    return tuple(c for c in cameras if start_source(c) is None)


def check_cameras(cameras: Sequence[str]) -> None:
    """ValueError, naming it, for a start view whose source is not one of the live cameras."""
    live = live_cameras(cameras)
    for camera in cameras:
        source = start_source(camera)
        if source is not None and source not in live:
            raise ValueError(
                f"camera {camera!r} is the start view of {source!r}, which is not one of the model's live "
                f"cameras {list(live)}"
            )


class StartViews:
    """Holds each start view's frame for the current episode (thread-safe enough: one writer, the
    inference worker). ``add(images, episode)`` returns ``images`` plus every start view; the frames are taken
    from ``images`` on the first call of an episode (``episode`` changed) and reused after that."""

    def __init__(self, cameras: Sequence[str]) -> None:
        check_cameras(cameras)
        self.views = {c: s for c in cameras if (s := start_source(c)) is not None}
        self._episode: int | None = None
        self._frames: dict[str, np.ndarray] = {}

    def __bool__(self) -> bool:
        return bool(self.views)

    def add(self, images: Mapping[str, np.ndarray], episode: int) -> dict[str, np.ndarray]:
        out = dict(images)
        if not self.views:
            return out
        if episode != self._episode:
            missing = sorted({s for s in self.views.values() if s not in images})
            if missing:
                raise KeyError(f"no frame of {missing} to start the episode's start views with")
            self._frames = {view: np.array(images[source]) for view, source in self.views.items()}
            self._episode = episode
        out.update(self._frames)
        return out
