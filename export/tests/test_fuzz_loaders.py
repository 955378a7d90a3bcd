"""Fuzzed model loading: mutated manifest / config / norm stats or truncated graphs are refused with a reason.

Whatever was done to an export directory, ``load_policy`` either loads it or raises one of the runtime's
documented errors (ManifestError / IntegrityError, ConfigError, NormStatsError, PreprocessError: all
ValueError subclasses with a message); never a KeyError, TypeError or AttributeError from deep inside, and
nothing unverified runs. A short seeded run (hypothesis, derandomised) is part of ``make test``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("onnxruntime")

from apt_policy.core.config import ConfigError  # noqa: E402
from apt_policy.core.normalize import NormStatsError  # noqa: E402
from apt_policy.core.preprocess import PreprocessError  # noqa: E402
from apt_policy.runtime.load import load_policy  # noqa: E402
from apt_policy.runtime.manifest import MANIFEST_NAME, IntegrityError, ManifestError  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REFUSALS = (ManifestError, ConfigError, NormStatsError, PreprocessError)
FUZZ = settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ODD_VALUES = st.sampled_from([None, -1, 0, 1e308, "x", "", [], {}, [1, "a"], {"a": 1}, True, -(2**40)])


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a JSON tree (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree[:4]):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(tree: Any, path: tuple, action: str, value: Any) -> None:
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "delete":
        del parent[key]
    else:
        parent[key] = value


@pytest.fixture(scope="module")
def export_copy(tiny_export: Path) -> Path:
    """The tiny random-weight export (root conftest.py), never modified: each case works on a copy."""
    return tiny_export


def _load_or_refuse(directory: Path) -> str:
    try:
        policy = load_policy(directory, "onnxruntime")
    except REFUSALS as exc:
        assert str(exc), "a refusal must say why"
        return type(exc).__name__
    policy.info  # noqa: B018 - a loaded policy is a complete one
    return "loaded"


@FUZZ
@given(data=st.data())
def test_mutated_manifests_are_loaded_or_refused_with_a_reason(
    export_copy: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    work = tmp_path_factory.mktemp("mutated")
    directory = work / "export"
    shutil.copytree(export_copy, directory)
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    paths = _paths(manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(manifest)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["delete", "replace"]))
        _mutate(manifest, path, action, data.draw(ODD_VALUES))
    text = json.dumps(manifest)
    if data.draw(st.booleans()):
        text = text[: data.draw(st.integers(0, len(text)))]  # a truncated copy
    (directory / MANIFEST_NAME).write_text(text)
    _load_or_refuse(directory)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.99])
def test_truncated_graphs_are_refused_before_onnx_runtime_sees_them(
    export_copy: Path, tmp_path: Path, fraction: float
) -> None:
    directory = tmp_path / "export"
    shutil.copytree(export_copy, directory)
    for graph in sorted(directory.glob("*.onnx")):
        data = graph.read_bytes()
        graph.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(IntegrityError, match="does not match the manifest"):
            load_policy(directory, "onnxruntime")
        graph.write_bytes(data)
    assert _load_or_refuse(directory) == "loaded"  # restored: loads again
