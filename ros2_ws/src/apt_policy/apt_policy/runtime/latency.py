"""Simulated inference latency (simulation only): named profiles from published figures, and a Policy wrapper.

A profile says how long one chunk takes from observation to actions on a target computer. Every closed loop
on this machine infers in 10-25 ms; the targets take 45-250 ms (``docs/SIMULATION.md``, "Latency profiles",
sources in ``shared/reference/vla_deployment.md``). Profiles:

* ``none``          -- 0 (no added latency)
* ``fixed:<ms>``    -- exactly ``<ms>`` milliseconds every time
* ``fixed:<ms>:<j>`` -- median ``<ms>``, log-normal spread ``<j>/<ms>`` (about +-``<j>`` ms at one sigma):
                       network delay with jitter (remote inference tests)
* ``orin``          -- Jetson AGX Orin, TensorRT: median 180 ms, spread 8 % (log-normal), and a heavy tail:
                       5 % of chunks take 1.2-1.7x longer (216-306 ms: GR00T N1.7's 216 ms on Orin, N1.6's
                       300 ms eager, spikes after idle without locked clocks)
* ``thor``          -- Jetson Thor: median 95 ms, spread 5 %, 2 % of chunks 1.2-1.5x
* ``rtx4090``       -- RTX 4090 workstation: median 45 ms, spread 6 %, 1 % of chunks 1.2-1.6x

``LatencyProfile.sample(rng)`` draws one latency in seconds (pure: the simulated-clock evaluator advances its
own clock by it, so figures reproduce exactly from a seed). :class:`SimulatedLatencyPolicy` wraps a Policy for
real-time runs (the node's ``simulated_latency`` parameter, ``make demo DEMO_ARGS="--latency orin"``): each
``predict`` returns no earlier than the sampled latency after it was called (a slower real inference is not
shortened). Never use it on a robot: it only makes the policy slower.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .policy import History

__all__ = ["PROFILES", "LatencyProfile", "SimulatedLatencyPolicy", "parse_latency"]


@dataclass(frozen=True)
class LatencyProfile:
    """Latency ``median_s * exp(sigma * N(0, 1))``, times ``U(tail_scale)`` with ``tail_probability``.

    Every sample draws the same three random numbers, so a seeded generator gives the same sequence whatever
    the parameters.
    """

    name: str
    median_s: float
    sigma: float = 0.0
    tail_probability: float = 0.0
    tail_scale: tuple[float, float] = (1.0, 1.0)
    source: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median_s) and self.median_s >= 0):
            raise ValueError(f"latency must be finite and >= 0, got {self.median_s} s")
        if not (self.sigma >= 0 and 0 <= self.tail_probability <= 1):
            raise ValueError("sigma must be >= 0 and tail_probability in [0, 1]")
        lo, hi = self.tail_scale
        if not (1.0 <= lo <= hi):
            raise ValueError(f"tail_scale must satisfy 1 <= low <= high, got {self.tail_scale}")

    def sample(self, rng: np.random.Generator) -> float:
        """One latency (s) drawn from ``rng``."""
        z, u_tail, u_scale = rng.standard_normal(), rng.random(), rng.random()
        value = self.median_s * math.exp(self.sigma * z)
        if u_tail < self.tail_probability:
            lo, hi = self.tail_scale
            value *= lo + (hi - lo) * u_scale
        return float(value)

    @property
    def is_zero(self) -> bool:
        return self.median_s == 0.0

    def describe(self) -> str:
        if self.is_zero:
            return "none (no added latency)"
        text = f"{self.name}: median {self.median_s * 1e3:.0f} ms"
        if self.sigma:
            text += f", spread {self.sigma * 100:.0f} %"
        if self.tail_probability:
            lo, hi = self.tail_scale
            text += f", {self.tail_probability * 100:.0f} % of chunks {lo:g}-{hi:g}x"
        return text


PROFILES: dict[str, LatencyProfile] = {
    "none": LatencyProfile("none", 0.0, source="no added latency"),
    "orin": LatencyProfile(
        "orin",
        0.180,
        sigma=0.08,
        tail_probability=0.05,
        tail_scale=(1.2, 1.7),
        source="GR00T N1.6 on Jetson AGX Orin, TensorRT, end to end: 173 ms (300 ms PyTorch eager); "
        "GR00T N1.7 (Qwen3-VL-family backbone) on Orin: 216 ms; ApxInf Orin BF16: 166 ms; spikes after "
        "idle unless clocks are locked",
    ),
    "thor": LatencyProfile(
        "thor",
        0.095,
        sigma=0.05,
        tail_probability=0.02,
        tail_scale=(1.2, 1.5),
        source="GR00T N1.6 on Jetson Thor: 92 ms; GR00T N1.7 on Thor: 93.8 ms",
    ),
    "rtx4090": LatencyProfile(
        "rtx4090",
        0.045,
        sigma=0.06,
        tail_probability=0.01,
        tail_scale=(1.2, 1.6),
        source="GR00T N1.6 on an RTX 4090: 43 ms (pi0 73 ms in its paper; users report ~86 ms for openpi)",
    ),
}


def parse_latency(spec: str | None) -> LatencyProfile:
    """``''`` / None / ``none`` -> no latency; ``fixed:<ms>``; or a profile name (ValueError otherwise)."""
    text = (spec or "").strip().lower()
    if not text:
        return PROFILES["none"]
    if text in PROFILES:
        return PROFILES[text]
    if text.startswith("fixed:"):
        try:
            ms, jitter = (float(v) for v in [*text.split(":")[1:], "0"][:2])
            if text.count(":") > 2:
                raise ValueError
        except ValueError:
            raise ValueError(f"latency {spec!r}: expected fixed:<milliseconds>[:<jitter ms>]") from None
        if not (math.isfinite(ms) and ms >= 0 and math.isfinite(jitter) and jitter >= 0):
            raise ValueError(f"latency {spec!r}: milliseconds must be finite and >= 0")
        if jitter > 0 and ms > 0:  # log-normal spread: about +-jitter ms at one standard deviation
            return LatencyProfile(
                f"fixed:{ms:g}:{jitter:g}", ms * 1e-3, sigma=jitter / ms, source="fixed+jitter"
            )
        return LatencyProfile(f"fixed:{ms:g}", ms * 1e-3, source="fixed")
    raise ValueError(f"unknown latency {spec!r}: choose '', none, fixed:<ms> or one of {sorted(PROFILES)}")


class SimulatedLatencyPolicy:
    """A Policy whose ``predict`` returns ``profile.sample(rng)`` seconds after it was called (or later).

    ``warmup`` is not delayed. Other attributes (``info``, ``close``) come from the wrapped policy; ``prefix``
    is passed on only when given, so policies without real-time-chunking inputs keep working.
    """

    def __init__(
        self,
        policy: Any,
        profile: LatencyProfile,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy
        self.profile = profile
        self._rng = np.random.default_rng(seed)
        self._clock = clock
        self._sleep = sleep
        self.last_latency_s = 0.0

    @property
    def info(self) -> Any:
        return self.policy.info

    def predict(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        noise: np.ndarray | None = None,
        prefix: np.ndarray | None = None,
        history: History | None = None,
    ) -> np.ndarray:
        t0 = self._clock()
        target = self.profile.sample(self._rng)
        self.last_latency_s = target
        if history is not None:
            out = self.policy.predict(images, state, instruction, noise, prefix=prefix, history=history)
        elif prefix is None:
            out = self.policy.predict(images, state, instruction, noise)
        else:
            out = self.policy.predict(images, state, instruction, noise, prefix=prefix)
        remaining = target - (self._clock() - t0)
        if remaining > 0:
            self._sleep(remaining)
        return np.asarray(out)

    def warmup(self) -> None:
        self.policy.warmup()

    def __getattr__(self, name: str) -> Any:  # close(), and anything else a backend offers
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)
