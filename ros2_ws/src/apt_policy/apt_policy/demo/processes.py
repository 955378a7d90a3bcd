"""Child processes of the demo: each in its own process group, output to a log file, stopped in order.

``ManagedProcesses`` starts commands with ``start_new_session=True`` (a Ctrl-C in the terminal reaches only
the demo, which then stops its children itself), checks that they are still alive, and stops them with
SIGINT (the ROS nodes shut down cleanly and write their summaries), then SIGKILL to the whole group after a
grace period. Use it as a context manager so every exit path, including KeyboardInterrupt, stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ManagedProcesses", "ProcessDiedError", "log_tail"]


class ProcessDiedError(RuntimeError):
    """A child process exited while the demo needed it; the message names it and its log file."""


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" if it does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path


def default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, even if this process inherited it ignored
    (a shell's background job), so the child's clean SIGINT shutdown works."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ManagedProcesses:
    """Start, watch and stop named child processes (see the module docstring)."""

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None, grace_s: float = 10.0) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.grace_s = grace_s
        self.children: list[Child] = []

    def start(self, name: str, args: Sequence[str], log_name: str | None = None) -> Child:
        """Start ``args`` as ``name`` with stdout and stderr in ``<log_dir>/<log_name or name>.log``."""
        log = self.log_dir / f"{log_name or name}.log"
        with log.open("wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                list(args),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=default_sigint,
            )
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def get(self, name: str) -> Child:
        for child in reversed(self.children):
            if child.name == name:
                return child
        raise KeyError(name)

    def check_alive(self) -> None:
        """Raise :class:`ProcessDiedError` if any running child has exited."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise ProcessDiedError(
                    f"{child.name} exited with status {code}; see {child.log}\n--- last lines ---\n"
                    f"{log_tail(child.log)}"
                )

    def stop(self, name: str, timeout_s: float | None = None) -> int | None:
        """Stop one child (SIGINT, then SIGKILL to its group); returns its exit status."""
        child = self.get(name)
        self.children.remove(child)
        return _stop([child], self.grace_s if timeout_s is None else timeout_s)[0]

    def stop_all(self, timeout_s: float | None = None) -> None:
        """Stop every child, the most recently started first."""
        children, self.children = list(reversed(self.children)), []
        _stop(children, self.grace_s if timeout_s is None else timeout_s)

    def __enter__(self) -> ManagedProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop(children: Sequence[Child], timeout_s: float) -> list[int | None]:
    for child in children:
        if child.proc.poll() is None:
            _signal_group(child.proc, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    codes: list[int | None] = []
    for child in children:
        try:
            codes.append(child.proc.wait(max(0.05, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            _signal_group(child.proc, signal.SIGKILL)
            codes.append(child.proc.wait())
        _signal_group(child.proc, signal.SIGKILL)  # anything the child left behind in its group
    return codes
