"""Fixtures shared by every test directory: isolated ROS 2 environments for real DDS tests."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_domain_counter = itertools.count()


def _next_domain_id() -> int:
    """A ROS_DOMAIN_ID unique to this test within this pytest run (and unlikely to clash across runs)."""
    # Valid Fast DDS domains on Linux are 0..232; keep to 1..100 so port ranges stay small.
    return 1 + (os.getpid() * 7 + next(_domain_counter)) % 100


@pytest.fixture
def ros_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for a test that talks DDS: a unique ROS_DOMAIN_ID and logs in a temp dir.

    Applied to this process (for in-process rclpy) and returned for subprocesses.
    """
    pytest.importorskip("rclpy")
    log_dir = tmp_path / "ros_log"
    log_dir.mkdir()
    values = {
        "ROS_DOMAIN_ID": str(_next_domain_id()),
        "ROS_LOG_DIR": str(log_dir),
        "ROS_HOME": str(tmp_path / "ros_home"),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    env = dict(os.environ)
    env.update(values)
    return env


def _default_sigint() -> None:
    """SIGINT back to its default in a child (it may be inherited ignored from a background shell job)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ProcessGroup:
    """Starts test processes, captures their output to files, and stops all of them at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``args`` (a console script name or ``python -m`` list) with the test's ROS environment."""
        if args and shutil.which(args[0]) is None and not Path(args[0]).exists():
            exe = Path(sys.executable).parent / args[0]
            if exe.exists():
                args = [str(exe), *args[1:]]
        log = self.log_dir / f"{name}.log"
        proc = subprocess.Popen(
            args,
            env={**self.env, **(env or {})},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
        self.procs.append((name, proc, log))
        return proc

    def output(self, name: str) -> str:
        for n, _, log in self.procs:
            if n == name:
                return log.read_text(errors="replace")
        raise KeyError(name)

    def stop_all(self, timeout: float = 10.0) -> None:
        import signal

        for _, proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for _, proc, _ in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _tiny_export(root: Path, family: str) -> Path:
    exe = Path(sys.executable).parent
    script = Path(__file__).parent / "tests" / "make_tiny_bundle.py"
    subprocess.run([sys.executable, str(script), str(root), family], check=True, capture_output=True)
    out = root / "onnx"
    subprocess.run(
        [str(exe / "apt-export"), "onnx", "--bundle", str(root / "bundle"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert (out / "manifest.json").is_file()
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random one-camera FR3 policy exported with apt-export (built in subprocesses: no torch here)."""
    return _tiny_export(tmp_path_factory.mktemp("tiny_model"), "apt")


@pytest.fixture(scope="session")
def tiny_two_camera_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny APT policy with two cameras, ``front`` and ``side``."""
    return _tiny_export(tmp_path_factory.mktemp("tiny_two_cameras"), "apt_two_cameras")


@pytest.fixture(scope="session")
def tiny_action_prior_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same for the action-prior family: a stateful model (3 history steps)."""
    return _tiny_export(tmp_path_factory.mktemp("tiny_action_prior"), "action_prior")


@pytest.fixture(scope="session")
def tiny_start_view_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stateful action-prior policy with the cameras ``front`` and ``front@start`` (a start view)."""
    return _tiny_export(tmp_path_factory.mktemp("tiny_start_view"), "action_prior_start_view")


@pytest.fixture
def processes(ros_env: dict[str, str], tmp_path: Path) -> Iterator[ProcessGroup]:
    """Start real processes on the test's DDS domain; all are stopped (SIGINT, then SIGKILL) afterwards."""
    group = ProcessGroup(ros_env, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
