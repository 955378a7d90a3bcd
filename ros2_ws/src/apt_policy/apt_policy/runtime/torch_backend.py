"""torch backend: the bundle's APTPolicy itself (imports torch and the model lazily, only here)."""

from __future__ import annotations

from pathlib import Path

from .policy import Policy


def load_torch_policy(path: str | Path, seed: int | None = None, device: str = "cpu") -> Policy:
    """APTPolicy.from_bundle (validates config, weights, norm stats, tokenizer)."""
    from ..model.policy import APTPolicy

    return APTPolicy.from_bundle(path, seed=seed, device=device)
