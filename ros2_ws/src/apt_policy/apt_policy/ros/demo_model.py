"""The demo model for integration tests and the streaming benchmark: trained and exported once, then cached.

``ensure_demo_export()`` returns an ONNX export directory of the Stage-2 demo policy, building it on first
use with the project's own tools (``apt-train demo`` then ``apt-export onnx``) in subprocesses, so the caller
never imports torch. Cache: ``$APT_CACHE`` or ``<repo>/.cache`` (``demo/bundle``, ``demo/onnx``); delete it
to rebuild. A file lock makes concurrent callers wait for one build.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

MANIFEST = "manifest.json"


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


def _find_bundle(root: Path) -> Path:
    """The Stage-2 bundle written by ``apt-train demo`` (a dir with config.json), preferring ``stage2``."""
    for candidate in (root / "stage2", root):
        if (candidate / "config.json").is_file():
            return candidate
    found = sorted(p.parent for p in root.rglob("config.json") if "stage2" in str(p.parent))
    if found:
        return found[0]
    raise FileNotFoundError(f"no Stage-2 bundle (config.json) under {root}")


def ensure_demo_export(cache: Path | None = None, verbose: bool = True) -> Path:
    """ONNX export dir of the demo policy (built on first use; see the module docstring)."""
    root = (cache or cache_dir()) / "demo"
    onnx_dir = root / "onnx"
    if (onnx_dir / MANIFEST).is_file():
        return onnx_dir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (onnx_dir / MANIFEST).is_file():
            return onnx_dir
        out = None if verbose else subprocess.DEVNULL
        bundle_root = root / "bundle"
        if not any(bundle_root.rglob("config.json")) if bundle_root.exists() else True:
            if verbose:
                print(
                    f"[demo_model] training the demo policy into {bundle_root} (cached afterwards)",
                    flush=True,
                )
            subprocess.run([_tool("apt-train"), "demo", "--out", str(bundle_root)], check=True, stdout=out)
        bundle = _find_bundle(bundle_root)
        tmp = root / "onnx.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        if verbose:
            print(f"[demo_model] exporting {bundle} to ONNX", flush=True)
        subprocess.run(
            [_tool("apt-export"), "onnx", "--bundle", str(bundle), "--out", str(tmp)], check=True, stdout=out
        )
        if not (tmp / MANIFEST).is_file():
            raise RuntimeError(f"apt-export onnx wrote no {MANIFEST} in {tmp}")
        shutil.rmtree(onnx_dir, ignore_errors=True)
        tmp.rename(onnx_dir)
    return onnx_dir


def main() -> None:
    print(ensure_demo_export())


if __name__ == "__main__":
    main()
