"""A small word-level tokenizer standing in for Qwen's when no pretrained tokenizer is available.

Its vocabulary is a fixed list of everyday instruction words, chosen without looking at any held-out
phrasing: it plays the role of a pretrained tokenizer (every word has an id; the frozen, random VLM has
learned nothing about any of them). Unknown words map to [UNK].
"""

from __future__ import annotations

from pathlib import Path

from ..core.preprocess import build_word_tokenizer

WORDS = [
    "a",
    "an",
    "the",
    "this",
    "that",
    "these",
    "those",
    "one",
    "ones",
    "it",
    "its",
    "my",
    "your",
    "their",
    "to",
    "for",
    "of",
    "on",
    "in",
    "at",
    "by",
    "with",
    "from",
    "into",
    "onto",
    "above",
    "below",
    "under",
    "over",
    "near",
    "next",
    "beside",
    "behind",
    "front",
    "left",
    "right",
    "up",
    "down",
    "top",
    "bottom",
    "middle",
    "center",
    "go",
    "move",
    "reach",
    "touch",
    "grab",
    "grasp",
    "pick",
    "place",
    "put",
    "push",
    "pull",
    "point",
    "hover",
    "tap",
    "bring",
    "get",
    "take",
    "hold",
    "stop",
    "wait",
    "arm",
    "hand",
    "gripper",
    "tool",
    "finger",
    "fingers",
    "robot",
    "block",
    "blocks",
    "cube",
    "cubes",
    "box",
    "boxes",
    "object",
    "objects",
    "item",
    "thing",
    "target",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "black",
    "white",
    "gray",
    "grey",
    "pink",
    "brown",
    "please",
    "now",
    "then",
    "and",
    "or",
    "not",
    "again",
    "slowly",
    "quickly",
    "carefully",
]


def vocabulary() -> list[str]:
    return sorted(set(WORDS))


def write_default_tokenizer(path: str | Path) -> Path:
    """Write the default word-level tokenizer.json to ``path`` and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_word_tokenizer([" ".join(vocabulary())], path)
    return path
