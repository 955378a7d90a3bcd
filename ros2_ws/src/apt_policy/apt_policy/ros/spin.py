"""The shared body of the package's executables: init rclpy, spin one node, map errors to exit codes.

Exit codes: 0 on Ctrl-C / SIGTERM / external shutdown / a node that says it is ``done`` (a lifecycle node
shut down through its ``~/change_state``), 2 for an invalid parameter (the message names it),
1 for any other startup failure when ``report_errors`` is set (otherwise it propagates with its traceback).

SIGINT and SIGTERM are a request to stop, never an exception (:class:`StopSignals`): the node is built to
the end, spun until the request, then its ``shutdown()`` and ``destroy_node()`` run to the end while the
rclpy context is still valid (the node can still publish its hold), and only then is rclpy shut down. A
second Ctrl-C (``ros2 launch`` forwards one after the terminal's) or a SIGTERM during all that is ignored:
the arm is held, logs and summaries are written, the exit status is 0.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_POLL_S = 0.1  # the executor wakes at least this often to see a stop request


class StopSignals:
    """SIGINT and SIGTERM set :attr:`requested`; nothing is raised, whatever arrives and whenever.

    Replaces rclpy's handlers (``rclpy.init`` is then called with ``SignalHandlerOptions.NO``), which shut
    the context down at once, under a node still starting or stopping, and chain to Python's default,
    which raises KeyboardInterrupt wherever the main thread is, also in the middle of the node's shutdown.
    Only the main thread can install signal handlers: elsewhere (a node spun in a test thread) this does
    nothing and :attr:`installed` is false.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.installed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            # After a stop request the process is on its way out: ignored from here on, also during the
            # interpreter's finalisation (which puts handlers it installed back to SIG_DFL: -2, not 0).
            signal.signal(sig, signal.SIG_IGN if self.requested else previous)

    @property
    def requested(self) -> bool:
        return self.count > 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 2:
            print(
                f"[{self.name}] {signal.Signals(signum).name} again: already shutting down; further "
                "signals are ignored",
                file=sys.stderr,
                flush=True,
            )


def spin_node(
    make_node: Callable[[], Any],
    name: str,
    args: list[str] | None = None,
    parameter_errors: tuple[type[BaseException], ...] = (ValueError,),
    report_errors: bool = False,
) -> int:
    """Run ``make_node()`` on a SingleThreadedExecutor until Ctrl-C; returns the process exit code.
    A crash in native code (SIGSEGV, SIGABRT, ...) prints every thread's Python stack to stderr first."""
    faulthandler.enable()
    with StopSignals(name) as stop:
        options = SignalHandlerOptions.NO if stop.installed else None
        rclpy.init(args=args, signal_handler_options=options)
        node = None
        code = 0
        try:
            node = make_node()
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            if stop.installed:
                while not stop.requested and executor.context.ok() and not getattr(node, "done", False):
                    executor.spin_once(timeout_sec=STOP_POLL_S)
            else:
                executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except parameter_errors as exc:
            print(f"[{name}] invalid parameter: {exc}", file=sys.stderr, flush=True)
            code = 2
        except Exception as exc:
            if not report_errors:
                raise
            print(f"[{name}] failed to start: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            code = 1
        finally:
            if node is not None:
                node.shutdown()
                node.destroy_node()
            rclpy.try_shutdown()
    return code
