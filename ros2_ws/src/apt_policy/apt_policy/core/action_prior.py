"""The "action_prior" family's settings (``PolicyConfig.family_config``), torch-free.

The action-prior VLA (arXiv 2606.26095; docs/ACTION_PRIOR.md) has an action encoder (K steps of state +
executed action, or an action chunk -> one latent token), a flow-matching decoder conditioned on that
latent, the history token and the state, and a head mapping VLM features to the latent. The head's width,
heads and layers are ``PolicyConfig.expert`` (one cross-attention layer per ``layer_map`` entry); the
encoder's and decoder's sizes are here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from .config import ConfigError

HISTORY_INPUTS = ("history_states", "history_actions", "history_mask")  # the history graph's inputs


@dataclass(frozen=True)
class ActionPriorConfig:
    """Sizes of the action module. ``history_steps`` K: (state, executed action) pairs in the history
    token (0: no history token); ``latent_dim``: the action embedding (encoder output, head target)."""

    history_steps: int = 4
    latent_dim: int = 32
    width: int = 64
    num_heads: int = 4
    mlp_dim: int = 128
    encoder_layers: int = 2
    decoder_layers: int = 2

    def validate(self) -> ActionPriorConfig:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name == "history_steps" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"family_config.{f.name}={value!r}: must be an integer >= {low}")
        if self.width % self.num_heads:
            raise ConfigError(
                f"family_config.width={self.width}: must be a multiple of num_heads={self.num_heads}"
            )
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ActionPriorConfig:
        """Parse and validate ``family_config``; unknown keys are refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"family_config: unknown field(s) {unknown} for family 'action_prior'")
        return cls(**dict(data)).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
