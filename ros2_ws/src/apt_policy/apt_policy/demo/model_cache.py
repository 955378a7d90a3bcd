"""The demo model for integration tests, the streaming benchmark and ``make demo``: trained and exported
once, then cached.

``ensure_demo_export()`` returns an ONNX export directory of the Stage-2 demo policy, building it on first
use with the project's own tools (``apt-train demo`` then ``apt-export onnx``) in subprocesses, so the caller
never imports torch. ``ensure_demo_bundle()`` returns the trained Stage-2 bundle alone.

Cache: ``$APT_CACHE`` or ``<repo>/.cache``, under ``demo/train-<key>/`` where ``key`` hashes the source of
everything that decides the trained weights (``apt_policy`` core, robots, tasks, model, training); the
export sits beside it in ``onnx-<key>`` keyed on that plus the exporter and runtime source. Changing that code
therefore rebuilds on the next call; delete the cache to force it. A file lock makes concurrent callers wait
for one build.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "manifest.json"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # apt_policy/
TRAIN_SOURCES = ("core", "robots", "tasks", "model", "training")  # decide the trained weights
EXPORT_SOURCES = ("runtime",)  # plus the apt_export package: decide the exported graphs


def cache_dir() -> Path:
    env = os.environ.get("APT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[5] / ".cache"


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} nor on PATH (run `make setup`)")
    return found


def source_hash(dirs: Iterable[Path], length: int = 12) -> str:
    """sha256 over the relative paths and contents of every ``*.py`` under ``dirs`` (sorted)."""
    digest = hashlib.sha256()
    for root in dirs:
        root = Path(root)
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()[:length]


def _export_package_dir() -> Path | None:
    spec = importlib.util.find_spec("apt_export")  # locates the package without importing it (or torch)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def train_key() -> str:
    return source_hash(PACKAGE_DIR / name for name in TRAIN_SOURCES)


def export_key() -> str:
    dirs = [PACKAGE_DIR / name for name in EXPORT_SOURCES]
    package = _export_package_dir()
    if package is not None:
        dirs.append(package)
    return f"{train_key()}-{source_hash(dirs, 8)}"


# APT demos trained with other settings, as other families' starting points: name -> DemoSettings overrides.
APT_VARIANTS: dict[str, dict[str, object]] = {"apt_grounding_1500": {"grounding_steps": 1500}}
# The action-distillation student starts from a VLM grounded for 1500 stage-0 steps, not the 3000 the APT and
# action-prior demos use: on the 3000-step VLM it missed the demo's scene 20000 in both DDS runs, on the
# 1500-step one it reached it (docs/ACTION_DISTILLATION.md, "Ninth session").
STUDENT_VLM_FROM = "apt_grounding_1500"


def demo_root(cache: Path | None = None, family: str = "apt") -> Path:
    """The cache directory of the current training code (``demo/train-<key>``; other families and the APT
    variants ``demo/<name>-train-<key>``, e.g. the action-distillation student)."""
    prefix = "" if family == "apt" else f"{family}-"
    return (cache or cache_dir()) / "demo" / f"{prefix}train-{train_key()}"


def _train_command(bundle_root: Path, family: str, cache: Path | None, verbose: bool = True) -> list[str]:
    """``apt-train demo`` for ``family``. The action-prior demo reuses the APT demo's frozen VLM (its stage-0
    grounding) and demonstrations, so the APT demo is built first; the action-distillation student starts
    from the VLM of an APT demo with 1500 stage-0 steps (``STUDENT_VLM_FROM``), built first for it."""
    cmd = [_tool("apt-train"), "demo", "--out", str(bundle_root)]
    if family == "apt":
        return cmd
    if family in APT_VARIANTS:
        return [
            *cmd,
            *(arg for k, v in APT_VARIANTS[family].items() for arg in ("--set", f"{k}={json.dumps(v)}")),
        ]
    if family == "action_distillation":
        student_vlm = ensure_demo_bundle(cache, verbose, STUDENT_VLM_FROM)
        return [*cmd, "--family", family, "--vlm-from", str(student_vlm)]
    apt_stage2 = ensure_demo_bundle(cache, verbose)
    sets = {"vlm_from": str(apt_stage2), "data": str(apt_stage2.parent / "demos.npz")}
    cmd += ["--family", family, "--threads", "1"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    return cmd


def _find_bundle(root: Path) -> Path:
    """The Stage-2 bundle written by ``apt-train demo`` (a dir with config.json), preferring ``stage2``."""
    for candidate in (root / "stage2", root):
        if (candidate / "config.json").is_file():
            return candidate
    found = sorted(p.parent for p in root.rglob("config.json") if "stage2" in str(p.parent))
    if found:
        return found[0]
    raise FileNotFoundError(f"no Stage-2 bundle (config.json) under {root}")


def _has_bundle(bundle_root: Path) -> bool:
    try:
        _find_bundle(bundle_root)
    except FileNotFoundError:
        return False
    return (bundle_root / ".complete").is_file()


def _build_bundle(root: Path, verbose: bool, family: str = "apt", cache: Path | None = None) -> Path:
    """Train into ``root/bundle`` unless complete (caller holds the lock); returns the Stage-2 bundle."""
    bundle_root = root / "bundle"
    if not _has_bundle(bundle_root):
        if verbose:
            print(
                f"[model_cache] training the {family} demo policy into {bundle_root} (then cached)",
                flush=True,
            )
        shutil.rmtree(bundle_root, ignore_errors=True)  # a half-finished run of older code
        out = None if verbose else subprocess.DEVNULL
        subprocess.run(_train_command(bundle_root, family, cache, verbose), check=True, stdout=out)
        _find_bundle(bundle_root)
        (bundle_root / ".complete").write_text(train_key() + "\n")
    return _find_bundle(bundle_root)


def ensure_demo_bundle(cache: Path | None = None, verbose: bool = True, family: str = "apt") -> Path:
    """The trained Stage-2 demo bundle of ``family`` (``apt`` or one of ``APT_VARIANTS``; ``apt-train demo``
    on first use; see the module docstring)."""
    root = demo_root(cache, family)
    bundle_root = root / "bundle"
    if _has_bundle(bundle_root):
        return _find_bundle(bundle_root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_bundle(root, verbose, family, cache)


def demo_bundle_is_cached(cache: Path | None = None) -> bool:
    """Whether the trained demo bundle of the current code is cached (exporting it then takes seconds)."""
    return _has_bundle(demo_root(cache) / "bundle")


def ensure_demo_export(cache: Path | None = None, verbose: bool = True) -> Path:
    """ONNX export dir of the demo policy (built on first use; see the module docstring)."""
    return ensure_demo_model(cache, verbose)[1]


def ensure_demo_model(
    cache: Path | None = None, verbose: bool = True, family: str = "apt"
) -> tuple[Path, Path]:
    """(Stage-2 bundle, its ONNX export) of ``family``'s demo, both under one cache key computed once at the
    start, so code edited while this trains does not send the export to another key."""
    root = demo_root(cache, family)
    onnx_dir = root / f"onnx-{export_key()}"
    if (onnx_dir / MANIFEST).is_file() and _has_bundle(root / "bundle"):
        return _find_bundle(root / "bundle"), onnx_dir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bundle = _build_bundle(root, verbose, family, cache)
        if (onnx_dir / MANIFEST).is_file():
            return bundle, onnx_dir
        out = None if verbose else subprocess.DEVNULL
        tmp = root / "onnx.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        if verbose:
            print(f"[model_cache] exporting {bundle} to ONNX", flush=True)
        subprocess.run(
            [_tool("apt-export"), "onnx", "--bundle", str(bundle), "--out", str(tmp)], check=True, stdout=out
        )
        if not (tmp / MANIFEST).is_file():
            raise RuntimeError(f"apt-export onnx wrote no {MANIFEST} in {tmp}")
        for old in root.glob("onnx-*"):  # exports of older exporter code
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(onnx_dir)
    return bundle, onnx_dir


def main() -> None:
    print(ensure_demo_export())


if __name__ == "__main__":
    main()
