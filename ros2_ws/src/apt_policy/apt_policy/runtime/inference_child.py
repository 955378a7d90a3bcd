"""The inference child process of :class:`~apt_policy.runtime.process_policy.ProcessPolicy`.

    python -m apt_policy.runtime.inference_child FD     (FD: its end of the socket pair)

A module of its own, not imported by the package: run with ``-m``, it is then loaded exactly once.

SIGINT is ignored: a Ctrl-C in a terminal (or ``ros2 launch``) reaches the whole process group, and the
shutdown belongs to the parent, which asks the child to close or closes the socket; the child exits when it
reads "close" or the end of the socket (also when the parent dies). SIGTERM keeps its default: the parent's
last resort for a child that does not answer.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # before the imports: a Ctrl-C while loading too
    from apt_policy.runtime.process_policy import serve

    args = sys.argv[1:] if argv is None else argv
    serve(Connection(int(args[0])))


if __name__ == "__main__":
    main()
