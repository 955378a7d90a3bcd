"""Flow matching in openpi's convention: t = 1 is noise, t = 0 is data.

    x_t = t * noise + (1 - t) * actions,    target velocity u = noise - actions,
    sampling integrates dx/dt = v from t = 1 to 0 with Euler steps dt = -1 / steps.
Training times are drawn t ~ Beta(1.5, 1) (more weight near the noisy end), squeezed into [0.001, 1].

Real-time chunking (RTC, docs/APT_MODEL.md): the first d rows of a chunk are a committed *action prefix*
(normalised actions the new chunk must reproduce). ``prefix_rows`` marks them; ``prefix_path`` is where
those rows sit at flow time t:

    training-free ("hard prefix"):  x_t[:d] = t * noise[:d] + (1 - t) * prefix[:d]
    trained (per-token time):       x_t[:d] = prefix[:d]          (their token time is CLEAN_TIME = 0)

i.e. per-token time tau_i = t * (1 - c * m_i) (m_i = 1 on prefix rows, c = 1 for trained RTC) and
x_t[i] = tau_i * noise[i] + (1 - tau_i) * prefix[i] on prefix rows. An optional soft ramp blends the r rows
after the prefix towards the same path with weights (r - k) / (r + 1), k = 0..r-1 (``ramp_weights``).
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


CLEAN_TIME = 0.0  # the data end of the flow: the per-token time of a committed (clean) action


def prefix_rows(prefix_len: torch.Tensor, horizon: int) -> torch.Tensor:
    """Bool mask [B, horizon]: row i is part of the committed prefix (i < prefix_len[b]); prefix_len [B]."""
    rows = torch.arange(horizon, device=prefix_len.device)
    return rows[None, :] < prefix_len[:, None]


def ramp_weights(prefix_len: torch.Tensor, horizon: int, ramp: int) -> torch.Tensor:
    """Soft-ramp weights [B, horizon]: (ramp - k) / (ramp + 1) on row prefix_len + k, k < ramp; else 0."""
    k = torch.arange(horizon, device=prefix_len.device)[None, :] - prefix_len[:, None]
    w = (ramp - k).float() / float(ramp + 1)
    return torch.where((k >= 0) & (k < ramp), w, torch.zeros_like(w))


def prefix_path(
    prefix: torch.Tensor, noise: torch.Tensor, t: float | torch.Tensor, clean: torch.Tensor
) -> torch.Tensor:
    """Where the prefix rows sit at flow time t: tau * noise + (1 - tau) * prefix with tau = t * (1 - clean).

    prefix / noise [B, H, A] float32; clean [B] 1.0 (trained RTC: the rows are clean data, tau = 0) or 0.0
    (training-free: tau = t, the straight path from the initial noise to the prefix)."""
    tau = (1.0 - clean)[:, None, None] * t
    return tau * noise + (1.0 - tau) * prefix


def rtc_delay_mask(delay: torch.Tensor, horizon: int) -> torch.Tensor:
    """Float mask [B, horizon]: 1.0 on the first delay[b] rows (given clean in trained RTC), else 0.0."""
    return prefix_rows(delay, horizon).float()


def drift_offsets(drift: torch.Tensor, delay: torch.Tensor, horizon: int, return_rows: int) -> torch.Tensor:
    """Offsets [B, horizon, A] of a drifted committed prefix (trained RTC with prefix drift).

    Row i < d = delay[b] is off by drift[b] * (i + 1) / d (the previous chunk's late rows drift away
    linearly); row d + k continues from the last offset and returns to the demonstration over
    ``return_rows`` rows: drift[b] * (1 - (k + 1) / (return_rows + 1)), then 0. d = 0: no offset."""
    rows = torch.arange(horizon, device=drift.device, dtype=drift.dtype)[None, :]
    d = delay.to(drift.dtype)[:, None]
    inside = (rows + 1.0) / torch.clamp(d, min=1.0)
    after = 1.0 - (rows - d + 1.0) / float(return_rows + 1)
    weight = torch.where(rows < d, inside, torch.clamp(after, min=0.0))
    weight = torch.where(d > 0, weight, torch.zeros_like(weight))
    return weight[..., None] * drift[:, None, :]
