"""manifest.json of an exported policy directory: schema, writing, loading and integrity checks.

An export directory holds everything the robot needs (graphs, tokenizer, normalisation stats, bundle
config) and nothing that needs torch. Every file is listed with its sha256; loading verifies them so a
truncated copy or an edited graph is refused instead of producing wrong actions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_NAME = "manifest.json"
FORMAT = "apt-policy-export"
FORMAT_VERSION = 1
GRAPH_NAMES = ("prefix", "denoiser", "sampler")
# real-time chunking inputs (exports made before RTC lack them): sampler / denoiser
RTC_SAMPLER_INPUTS = ("prefix", "prefix_len", "rtc_trained")
RTC_DENOISER_INPUTS = ("clean_mask",)

Dim = int | str  # a fixed size, or a symbolic name ("batch") for a dynamic axis


class ManifestError(ValueError):
    """The export directory or its manifest is missing, malformed or of an unsupported version."""


class IntegrityError(ManifestError):
    """A file listed in the manifest is missing or its content does not match the recorded sha256."""


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (graphs can be several GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (ints or symbolic axis names) and numpy dtype name."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        if not isinstance(d["name"], str) or not d["name"]:
            raise ManifestError(f"tensor name {d['name']!r} is not a non-empty string")
        spec = cls(name=d["name"], shape=tuple(d["shape"]), dtype=str(d["dtype"]))
        for dim in spec.shape:
            if isinstance(dim, bool) or not (isinstance(dim, str) or (isinstance(dim, int) and dim >= 0)):
                raise ManifestError(
                    f"tensor {spec.name!r}: dimension {dim!r} is neither a size nor an axis name"
                )
        try:
            np.dtype(spec.dtype)
        except (TypeError, ValueError):
            raise ManifestError(f"tensor {spec.name!r}: {spec.dtype!r} is not a numpy dtype") from None
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class OptimizedGraph:
    """ONNX Runtime's optimised version of a graph, saved at export (same interface as the graph).

    It holds ORT contrib operators (fused norms, GELU, quantised MatMuls), so only ONNX Runtime's CPU
    provider of the recorded version runs it; anything else (TensorRT, other providers) uses the graph.
    """

    file: str
    level: str  # ORT graph optimisation level it was saved at ("extended")
    onnxruntime_version: str
    external_data: tuple[str, ...] = ()
    fusions: dict[str, int] = field(default_factory=dict)  # transformer-optimizer fused operators, if run

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OptimizedGraph:
        return cls(
            file=str(d["file"]),
            level=str(d["level"]),
            onnxruntime_version=str(d["onnxruntime_version"]),
            external_data=tuple(d.get("external_data", ())),
            fusions={str(k): int(v) for k, v in d.get("fusions", {}).items()},
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["external_data"] = list(self.external_data)
        return d


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph file (plus its external-data files, if any), its interface and optimised version."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: tuple[str, ...] = ()
    optimized: OptimizedGraph | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GraphSpec:
        return cls(
            file=str(d["file"]),
            inputs=tuple(TensorSpec.from_dict(x) for x in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(x) for x in d["outputs"]),
            external_data=tuple(d.get("external_data", ())),
            optimized=OptimizedGraph.from_dict(d["optimized"]) if d.get("optimized") else None,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "file": self.file,
            "external_data": list(self.external_data),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }
        if self.optimized is not None:
            d["optimized"] = self.optimized.to_dict()
        return d

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of this graph: the graph, its external data, the optimised graph and its data."""
        opt = () if self.optimized is None else (self.optimized.file, *self.optimized.external_data)
        return (self.file, *self.external_data, *opt)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass(frozen=True)
class EngineSpec:
    """A TensorRT engine built from one graph, with what it was built for (checked before loading)."""

    file: str
    graph_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    strongly_typed: bool
    profile: dict[str, list[list[int]]]  # input -> [min, opt, max]
    cache_key: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Manifest:
    """Parsed manifest.json. ``files`` maps every file of the directory (relative path) to its sha256."""

    model_id: str
    precision: str
    opset: int
    steps: int
    graphs: dict[str, GraphSpec]
    config: dict[str, Any]
    normalization: dict[str, Any]
    tokenizer: str | None
    files: dict[str, str]
    exporter: dict[str, Any] = field(default_factory=dict)
    engines: dict[str, EngineSpec] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def rtc_inputs(self) -> bool:
        """The sampler graph takes the real-time-chunking inputs (``RTC_SAMPLER_INPUTS``)."""
        sampler = self.graphs.get("sampler")
        return sampler is not None and all(n in sampler.input_names for n in RTC_SAMPLER_INPUTS)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "model_id": self.model_id,
            "precision": self.precision,
            "opset": self.opset,
            "steps": self.steps,
            "exporter": self.exporter,
            "graphs": {k: g.to_dict() for k, g in self.graphs.items()},
            "config": self.config,
            "normalization": self.normalization,
            "tokenizer": self.tokenizer,
            "files": dict(sorted(self.files.items())),
        }
        if self.engines:
            d["engines"] = {k: e.to_dict() for k, e in self.engines.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        if d.get("format") != FORMAT:
            raise ManifestError(
                f"not an APT export manifest (format={d.get('format')!r}, expected {FORMAT!r})"
            )
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"manifest format_version {version} is not supported by this apt_policy "
                f"(supports {FORMAT_VERSION}); re-export with a matching apt-export"
            )
        try:
            manifest = cls(
                model_id=str(d["model_id"]),
                precision=str(d["precision"]),
                opset=int(d["opset"]),
                steps=int(d["steps"]),
                graphs={k: GraphSpec.from_dict(g) for k, g in d["graphs"].items()},
                config=dict(d["config"]),
                normalization=dict(d["normalization"]),
                tokenizer=d.get("tokenizer"),
                files=dict(d["files"]),
                exporter=dict(d.get("exporter", {})),
                engines={k: EngineSpec.from_dict(e) for k, e in d.get("engines", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"malformed manifest: {exc!r}") from exc
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in manifest.files.items()):
            raise ManifestError("malformed manifest: 'files' must map file names to sha256 strings")
        if manifest.tokenizer is not None and not isinstance(manifest.tokenizer, str):
            raise ManifestError(
                f"malformed manifest: 'tokenizer' must be a file name, not {manifest.tokenizer!r}"
            )
        return manifest

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def graph_sha256(self, name: str) -> str:
        return self.files[self.graphs[name].file]


def hash_files(directory: str | Path, names: Iterable[str]) -> dict[str, str]:
    """sha256 of each named file under ``directory`` (relative names)."""
    root = Path(directory)
    return {name: sha256_file(root / name) for name in names}


def verify_files(directory: str | Path, manifest: Manifest, names: Iterable[str] | None = None) -> None:
    """Raise IntegrityError unless every listed file (default: all) exists with its recorded sha256."""
    root = Path(directory)
    for name in manifest.files if names is None else names:
        expected = manifest.files.get(name)
        if expected is None:
            raise IntegrityError(f"{name} is not listed in {root / MANIFEST_NAME}")
        path = root / name
        if not path.is_file():
            raise IntegrityError(f"{path} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"{path} does not match the manifest (sha256 {actual[:12]}... != {expected[:12]}...): "
                "the file was modified or corrupted; re-export or copy the directory again"
            )


def load_manifest(directory: str | Path, verify: bool = True) -> Manifest:
    """Read ``directory/manifest.json``; with ``verify`` also check every file's sha256."""
    root = Path(directory)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{root} is not an exported policy directory: {MANIFEST_NAME} not found")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path} must hold a JSON object")
    manifest = Manifest.from_dict(raw)
    # An engine dir keeps the graphs' interfaces but not the ONNX files; its engines are hashed instead.
    for name, graph in ({} if manifest.engines else manifest.graphs).items():
        for f in graph.files:
            if f not in manifest.files:
                raise ManifestError(f"graph {name!r} file {f} has no sha256 in the manifest")
    for name, engine in manifest.engines.items():
        if engine.file not in manifest.files:
            raise ManifestError(f"engine {name!r} file {engine.file} has no sha256 in the manifest")
    if verify:
        verify_files(root, manifest)
    return manifest
