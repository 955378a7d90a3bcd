"""The inference child process of :class:`~apt_policy.runtime.process_policy.ProcessPolicy`.

    python -m apt_policy.runtime.inference_child FD     (FD: its end of the socket pair)

A module of its own, not imported by the package: run with ``-m``, it is then loaded exactly once.
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection


def main(argv: list[str] | None = None) -> None:
    from apt_policy.runtime.process_policy import serve

    args = sys.argv[1:] if argv is None else argv
    serve(Connection(int(args[0])))


if __name__ == "__main__":
    main()
