"""Flow matching in openpi's convention: t = 1 is noise, t = 0 is data.

    x_t = t * noise + (1 - t) * actions,    target velocity u = noise - actions,
    sampling integrates dx/dt = v from t = 1 to 0 with Euler steps dt = -1 / steps.
Training times are drawn t ~ Beta(1.5, 1) (more weight near the noisy end), squeezed into [0.001, 1].
"""

from __future__ import annotations

import torch

TIME_BETA = (1.5, 1.0)
TIME_MIN = 0.001


def sample_time(batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flow times [batch] ~ Beta(1.5, 1) mapped to [0.001, 1] (via two Gamma draws, generator-seeded)."""
    a, b = TIME_BETA
    # torch.distributions cannot take a generator; Beta(a, b) = Ga / (Ga + Gb). For b = 1 use the
    # inverse CDF of the Beta(a, 1) marginal: t = u^(1/a), exact and generator-friendly.
    if b != 1.0:  # pragma: no cover - keep the general path explicit
        raise NotImplementedError("only Beta(a, 1) is implemented")
    u = torch.rand(batch, generator=generator)
    t = u ** (1.0 / a)
    return TIME_MIN + (1.0 - TIME_MIN) * t


def interpolate(
    actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity u) for actions/noise [B, H, A] and t [B]."""
    tt = t[:, None, None]
    return tt * noise + (1.0 - tt) * actions, noise - actions


def euler_times(steps: int) -> list[float]:
    """Start time of each Euler step: 1, 1 - 1/steps, ..., 1/steps."""
    return [1.0 - i / steps for i in range(steps)]
