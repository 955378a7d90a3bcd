"""The shared body of the package's executables: init rclpy, spin one node, map errors to exit codes.

Exit codes: 0 on Ctrl-C / external shutdown, 2 for an invalid parameter (the message names it), 1 for any
other startup failure when ``report_errors`` is set (otherwise it propagates with its traceback). The node's
``shutdown()`` and ``destroy_node()`` always run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def spin_node(
    make_node: Callable[[], Any],
    name: str,
    args: list[str] | None = None,
    parameter_errors: tuple[type[BaseException], ...] = (ValueError,),
    report_errors: bool = False,
) -> int:
    """Run ``make_node()`` on a SingleThreadedExecutor until Ctrl-C; returns the process exit code."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
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
