"""A wake-up latency probe (a small cyclictest): it tells machine stalls from the stalls of the code measured.

One process per CPU, pinned to it, single-threaded (no GIL shared with anything), SCHED_FIFO above
everything measured, sleeps to a fixed grid (1 ms) and records every wake-up later than a threshold. Run
beside a benchmark: a command that arrived late while a probe on some CPU was also kept from running for
milliseconds coincides with a machine-level stall (the hypervisor taking the virtual CPU, an interrupt storm,
a higher-priority task), which no code in the measured processes could have avoided; a late command with no
probe stall around it was the code's own doing.

    python -m apt_policy.bench.stall_probe --out stalls.json [--priority 99] [--period-ms 1]
        [--threshold-ms 2] [--duration 0]

Runs until SIGTERM / SIGINT (or ``--duration`` s) and writes JSON: per CPU the wake-ups, the lateness p99
and max, and every stall (start on CLOCK_MONOTONIC, which all processes share, and length, s). Cost: a
wake-up per CPU per period (~10-20 us of CPU each in CPython), which the measured threads see as that much
jitter at most.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from apt_policy.control.realtime import set_fifo


@dataclass
class CpuProbe:
    """One CPU's record: stalls as (start, length) in s, start = the wake-up that was due."""

    cpu: int
    wakeups: int = 0
    lateness_p99_ms: float = 0.0
    lateness_max_ms: float = 0.0
    stalls: list[tuple[float, float]] = field(default_factory=list)
    scheduling: str = "normal"


class LatenessHistogram:
    """Wake-up lateness in 10 us bins (the last one holds everything from 0.1 s on): constant memory however
    long the probe runs."""

    BIN_S = 1e-5
    BINS = 10_000

    def __init__(self) -> None:
        self.counts = [0] * self.BINS
        self.count = 0
        self.max = 0.0

    def add(self, late: float) -> None:
        index = int(late / self.BIN_S) if late > 0 else 0
        self.counts[min(index, self.BINS - 1)] += 1
        self.count += 1
        self.max = max(self.max, late)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0-1), to the bin's upper edge (at most the maximum); 0 when empty."""
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if n and seen >= rank:
                return self.max if index == self.BINS - 1 else min((index + 1) * self.BIN_S, self.max)
        return self.max


def probe(
    period: float,
    threshold: float,
    should_stop: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[LatenessHistogram, list[tuple[float, float]]]:
    """Sleep to the grid ``start + k * period`` until ``should_stop()``; returns (the lateness of every
    wake-up, stalls later than ``threshold`` as (due, lateness) in s). Wake-ups a stall swallowed are not made
    up: the grid continues from the next due time after the wake."""
    lateness = LatenessHistogram()
    stalls: list[tuple[float, float]] = []
    due = clock() + period
    while not should_stop():
        remaining = due - clock()
        if remaining > 0:
            sleep(remaining)
        now = clock()
        late = now - due
        lateness.add(late)
        if late > threshold:
            stalls.append((due, late))
        due += period * (1 + max(0, int(late // period)))
    return lateness, stalls


def stalls_overlapping(
    stalls: Sequence[tuple[float, float]], start: float, end: float
) -> list[tuple[float, float]]:
    """The stalls (start, length) that overlap the interval [start, end]."""
    return [(s, n) for s, n in stalls if s < end and s + n > start]


def _run_one(cpu: int, args: argparse.Namespace) -> CpuProbe:
    record = CpuProbe(cpu=cpu)
    os.sched_setaffinity(0, {cpu})
    if args.priority > 0:
        try:
            set_fifo(args.priority)
            record.scheduling = f"SCHED_FIFO {args.priority}"
        except (OSError, ValueError) as exc:
            record.scheduling = f"normal (SCHED_FIFO refused: {exc})"
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    lateness, stalls = probe(
        args.period_ms * 1e-3, args.threshold_ms * 1e-3, lambda: stop or time.monotonic() >= end
    )
    record.wakeups = lateness.count
    record.lateness_p99_ms = lateness.quantile(0.99) * 1e3
    record.lateness_max_ms = lateness.max * 1e3
    record.stalls = [(float(s), float(n)) for s, n in stalls]
    return record


def load(path: Path) -> list[CpuProbe]:
    """Read a probe's output file."""
    data = json.loads(Path(path).read_text())
    return [
        CpuProbe(**{**cpu, "stalls": [tuple(s) for s in cpu["stalls"]]})  # type: ignore[arg-type]
        for cpu in data["cpus"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="JSON output file")
    parser.add_argument("--priority", type=int, default=99, help="SCHED_FIFO priority (0: normal scheduling)")
    parser.add_argument("--period-ms", type=float, default=1.0, help="wake-up period (ms)")
    parser.add_argument("--threshold-ms", type=float, default=2.0, help="a wake-up this late is a stall (ms)")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run (0: until SIGTERM/SIGINT)"
    )
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)  # one child per CPU
    args = parser.parse_args(argv)
    if not (args.period_ms > 0 and args.threshold_ms > 0):
        parser.error("--period-ms and --threshold-ms must be > 0")
    if args.cpu is not None:
        args.out.write_text(json.dumps(asdict(_run_one(args.cpu, args))))
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    parts = [args.out.with_name(f"{args.out.name}.cpu{cpu}") for cpu in cpus]
    forwarded = [
        "--priority", str(args.priority), "--period-ms", str(args.period_ms),
        "--threshold-ms", str(args.threshold_ms), "--duration", str(args.duration),
    ]  # fmt: skip
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apt_policy.bench.stall_probe",
                "--out",
                str(part),
                "--cpu",
                str(cpu),
                *forwarded,
            ]
        )
        for cpu, part in zip(cpus, parts, strict=True)
    ]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    records = []
    for cpu, part, code in zip(cpus, parts, codes, strict=True):
        if code != 0 or not part.exists():
            print(f"stall_probe: the probe on CPU {cpu} failed (exit {code})", file=sys.stderr)
            return 1
        records.append(json.loads(part.read_text()))
        part.unlink()
    args.out.write_text(
        json.dumps({"period_ms": args.period_ms, "threshold_ms": args.threshold_ms, "cpus": records})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
