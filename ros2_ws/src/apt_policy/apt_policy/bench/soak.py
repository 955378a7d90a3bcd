"""Soak test: the policy node, fake_franka and fake_camera for a long run; does anything grow or break?

    python -m apt_policy.bench.soak                                    # 1 h, the cached demo model
    python -m apt_policy.bench.soak --duration 120 --switch-every 10 --dropout-every 40 --model DIR

Three processes on a private ROS domain (as ``apt_policy.bench.stream``): fake_franka, fake_camera and the
policy node at ``--rate`` Hz. A probe node switches the instruction every ``--switch-every`` s (three colours
in turn) and unplugs the camera (``/fake_camera/enable`` false) for ``--dropout-s`` s every
``--dropout-every`` s. Every ``--sample-every`` s it reads, for the node and its inference child: resident
memory, open file descriptors and threads (``/proc``), and the ``/dev/shm`` files of the image arena.

The report (JSON with ``--out``; a table on stdout) gives the first sample after ``--warmup`` s and the last
one, their growth, the node's missed ticks and lifetime status counters, the holds the dropouts caused, and
fake_franka's contract violations. :func:`problems` checks it against stated bounds: RSS may grow by at most
``max(--rss-mb, 5 %)``, descriptors by 2, threads not at all, at most one arena file while running and none
after the node stopped, no contract violation, and every process alive to the end. fake_franka keeps an
arrival log (``arrivals.json`` in the work dir: 1.2 MB for the two-minute test, so ~30 MB per hour at
100 Hz); when it counted a violation, the report says what happened around each (:func:`violation_context`).

The node streams stamped trajectories (``--trajectory-stamp tick``) as in ``sim.yaml``: node and fake_franka
share one clock. With ``zero`` (the real-arm default, ``franka.yaml``) consecutive commands may only arrive
within 10 ms of their send spacing (docs/CONTROL.md, "Timing faults"), a bound the node cannot check for the
transport; one DDS delivery 21 ms late on a loaded 2-core CI machine is then a ``too_fast`` at fake_franka by
design, not a leak.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apt_policy.bench.procfs import process_tree
from apt_policy.bench.rig import INSTRUCTIONS, Rig
from apt_policy.bench.stream import TRAJECTORY_TOPIC
from apt_policy.runtime.process_policy import arena_files


@dataclass
class Sample:
    """Resources of the node process tree at one time (s since the start)."""

    t: float
    rss_mb: float
    fds: int
    threads: int
    shm_files: int
    state: str
    missed_ticks: int


@dataclass
class SoakReport:
    duration_s: float
    rate_hz: float
    trajectory_stamp: str = "tick"
    samples: list[Sample] = field(default_factory=list)
    switches: int = 0
    dropouts: int = 0
    holds_seen: int = 0
    violations: dict[str, Any] = field(default_factory=dict)
    exited: dict[str, int | None] = field(default_factory=dict)
    shm_files_before: int = 0
    shm_files_after: int = 0
    violation_context: list[str] = field(default_factory=list)

    def baseline(self, warmup_s: float) -> Sample:
        after = [s for s in self.samples if s.t >= warmup_s]
        return after[0] if after else self.samples[0]


def _resources(pid: int) -> tuple[float, int, int]:
    """(RSS MB, open fds, threads) summed over the process tree of ``pid``."""
    rss_kb, fds, threads = 0, 0, 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text().splitlines()
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb += int(line.split()[1])
            elif line.startswith("Threads:"):
                threads += int(line.split()[1])
    return rss_kb / 1024.0, fds, threads


def shm_files() -> int:
    """How many image arena files are in /dev/shm (runtime.process_policy)."""
    return len(arena_files())


def run_soak(
    model: Path,
    duration_s: float,
    workdir: Path,
    rate: float = 100.0,
    switch_every: float = 30.0,
    dropout_every: float = 300.0,
    dropout_s: float = 3.0,
    sample_every: float = 10.0,
    domain: int | None = None,
    trajectory_stamp: str = "tick",
) -> SoakReport:
    """Run the soak (see the module docstring); processes and logs under ``workdir``."""
    if trajectory_stamp not in ("tick", "zero"):
        raise ValueError(f"trajectory_stamp must be 'tick' or 'zero', not {trajectory_stamp!r}")
    report = SoakReport(duration_s=duration_s, rate_hz=rate, trajectory_stamp=trajectory_stamp)
    report.shm_files_before = shm_files()  # other programs' arenas (a killed test's) are not ours
    node_args = ["-p", "inference_timeout:=5.0", "-p", f"trajectory_stamp:={trajectory_stamp}"]
    arrivals = workdir / "arrivals.json"
    franka_args = ["-p", f"arrival_log:={arrivals}"]
    rig = Rig(model, workdir, node_args, rate=rate, domain=domain, extra_args={"franka": franka_args})
    probe = rig.probe
    try:
        rig.wait_streaming()
        t0 = time.monotonic()
        next_switch, next_dropout, next_sample = switch_every, dropout_every, 0.0
        camera_back: float | None = None
        holding = False
        while (now := time.monotonic() - t0) < duration_s:
            if any(code is not None for code in rig.exit_codes().values()):
                break
            if now >= next_switch:
                report.switches += 1
                probe.say(INSTRUCTIONS[report.switches % len(INSTRUCTIONS)])
                next_switch += switch_every
            if now >= next_dropout:
                report.dropouts += 1
                probe.camera_enabled(False)
                camera_back = now + dropout_s
                next_dropout += dropout_every
            if camera_back is not None and now >= camera_back:
                probe.camera_enabled(True)
                camera_back = None
            state = probe.state()
            if state == 2 and not holding:
                report.holds_seen += 1
            holding = state == 2
            if now >= next_sample:
                rss, fds, threads = _resources(rig.procs["node"].pid)
                status = probe.status
                report.samples.append(
                    Sample(
                        t=round(now, 1),
                        rss_mb=round(rss, 1),
                        fds=fds,
                        threads=threads,
                        shm_files=shm_files(),
                        state=str(getattr(status, "state", "")),
                        missed_ticks=int(getattr(status, "missed_ticks", 0)),
                    )
                )
                next_sample += sample_every
            time.sleep(0.02)
        time.sleep(1.5)  # the last violations report (1 Hz)
        report.violations = dict(probe.violations)
    finally:
        report.exited = rig.close()
    report.shm_files_after = shm_files()
    if report.violations.get("total_violations"):
        report.violation_context = violation_context(workdir)
    return report


_LOG_LINE = re.compile(r"^\[(\w+)\] \[(\d+(?:\.\d+)?)\] \[[^\]]+\]: (.*)$")


def log_events(path: Path, severities: tuple[str, ...], contains: str = "") -> list[tuple[float, str]]:
    """(system time, message) of the ROS log lines of ``path`` at ``severities`` that contain ``contains``."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LOG_LINE.match(line)
        if m and m.group(1) in severities and contains in m.group(3):
            out.append((float(m.group(2)), m.group(3)))
    return out


def violation_context(workdir: Path, window_s: float = 1.0, most: int = 5) -> list[str]:
    """What happened around each contract violation fake_franka logged in ``workdir`` (the first ``most``):
    the trajectory commands received within ``window_s`` (fake_franka's ``arrivals.json``) -- how late the
    node wrote them after their stamp, how long DDS took, when the arm's handler took them, the largest gap
    between receptions -- and the node's warnings in that window. Enough to tell a late write or delivery
    from a plan the arm did not have, from the test output alone."""
    events = log_events(workdir / "franka.log", ("WARN", "ERROR"), "contract violation")
    if not events:
        return []
    fields: dict[str, np.ndarray] = {}
    path = workdir / "arrivals.json"
    if path.is_file():
        data = json.loads(path.read_text())
        for key in ("stamps", "sent", "received", "handled"):
            fields[key] = np.asarray(data.get(key, {}).get(TRAJECTORY_TOPIC, []), np.float64)
    n = len(fields.get("received", ()))
    usable = n > 0 and all(len(fields.get(k, ())) == n for k in ("stamps", "sent", "received", "handled"))
    warnings = log_events(workdir / "node.log", ("WARN", "ERROR"))
    out: list[str] = []
    for t, message in events[:most]:
        out.append(f"fake_franka: {message}")
        if usable:
            near = np.abs(fields["handled"] - t) <= window_s
            if near.any():
                stamp, sent = fields["stamps"][near], fields["sent"][near]
                received, handled = fields["received"][near], fields["handled"][near]
                late_write, dds = (sent - stamp) * 1e3, (received - sent) * 1e3
                late_handled = (handled - stamp) * 1e3
                gaps = np.diff(received) * 1e3 if received.size > 1 else np.zeros(1)
                before = np.flatnonzero(handled <= t + 1e-4)
                last = ""
                if before.size:  # the command handled last before the violation: the one that caused it
                    i = int(before[np.argmax(handled[before])])
                    last = (
                        f"; the last one before it: written {late_write[i]:.1f} ms after its stamp, "
                        f"{dds[i]:.1f} ms in DDS, handled {late_handled[i]:.1f} ms after its stamp"
                    )
                out.append(
                    f"  {int(near.sum())} commands within {window_s:g} s: written after their stamp max "
                    f"{late_write.max():.1f} ms, in DDS max {dds.max():.1f} ms, handled after their stamp "
                    f"max {late_handled.max():.1f} ms, largest gap between receptions {gaps.max():.1f} ms"
                    + last
                )
        else:
            out.append("  (no arrival log of the trajectory commands)")
        out.extend(f"  node {tw - t:+.3f} s: {m}" for tw, m in warnings if abs(tw - t) <= window_s)
    if len(events) > most:
        out.append(f"... and {len(events) - most} more violations in franka.log")
    return out


def problems(report: SoakReport, warmup_s: float, rss_mb: float = 30.0) -> list[str]:
    """What broke a bound (see the module docstring); empty when the soak passed."""
    out: list[str] = []
    if len(report.samples) < 2:
        return ["fewer than two samples: the run ended early"]
    first, last = report.baseline(warmup_s), report.samples[-1]
    if last.t < report.duration_s - 60 and last.t < 0.8 * report.duration_s:
        out.append(f"the run ended at {last.t:.0f} s of {report.duration_s:.0f} s")
    rss_bound = max(rss_mb, 0.05 * first.rss_mb)
    if last.rss_mb - first.rss_mb > rss_bound:
        out.append(f"RSS grew {last.rss_mb - first.rss_mb:.1f} MB (bound {rss_bound:.1f} MB)")
    if last.fds - first.fds > 2:
        out.append(f"file descriptors grew {first.fds} -> {last.fds}")
    if last.threads > first.threads:
        out.append(f"threads grew {first.threads} -> {last.threads}")
    most = max(s.shm_files for s in report.samples) - report.shm_files_before
    if most > 1:
        out.append(f"{most} image arena files of the node in /dev/shm at once")
    left = report.shm_files_after - report.shm_files_before
    if left > 0:
        out.append(f"{left} image arena files left in /dev/shm after the node stopped")
    total = report.violations.get("total_violations")
    if total is None:
        out.append("no violations report from fake_franka")
    elif total:
        out.append(f"{total} contract violations: {report.violations.get('violations')}")
    died = {n: c for n, c in report.exited.items() if c not in (0, None)}
    if died:
        out.append(f"processes exited with {died}")
    return out


def format_report(report: SoakReport, warmup_s: float) -> str:
    first, last = report.baseline(warmup_s), report.samples[-1]
    rss = (first.rss_mb, last.rss_mb, last.rss_mb - first.rss_mb)
    rows = [
        f"| | at {first.t:.0f} s | at {last.t:.0f} s | growth |",
        "|---|---|---|---|",
        "| node + inference RSS (MB) | {:.1f} | {:.1f} | {:+.1f} |".format(*rss),
        f"| open file descriptors | {first.fds} | {last.fds} | {last.fds - first.fds:+d} |",
        f"| threads | {first.threads} | {last.threads} | {last.threads - first.threads:+d} |",
        f"| /dev/shm arena files | {first.shm_files} | {last.shm_files} | "
        f"after stop: {report.shm_files_after} |",
        f"| node missed ticks (lifetime) | {first.missed_ticks} | {last.missed_ticks} | "
        f"{last.missed_ticks - first.missed_ticks:+d} |",
    ]
    total = report.violations.get("total_violations", "n/a")
    rows.append(
        f"\n{report.switches} instruction switches, {report.dropouts} camera dropouts "
        f"({report.holds_seen} holds entered), trajectory_stamp {report.trajectory_stamp}, "
        f"contract violations at fake_franka: {total}; "
        f"exit codes {report.exited}"
    )
    if report.violation_context:
        rows.append("\naround the contract violations:\n" + "\n".join(report.violation_context))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="export dir (default: the cached demo model)")
    ap.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--switch-every", type=float, default=30.0)
    ap.add_argument("--dropout-every", type=float, default=300.0)
    ap.add_argument("--dropout-s", type=float, default=3.0)
    ap.add_argument("--sample-every", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="growth is measured from here (s)")
    ap.add_argument("--rss-mb", type=float, default=30.0, help="allowed RSS growth (MB, or 5 %% if larger)")
    ap.add_argument(
        "--trajectory-stamp", choices=("tick", "zero"), default="tick",
        help="the node's trajectory_stamp (default tick, as sim.yaml; zero: real-arm default, 10 ms bound)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, help="write the report as JSON")
    ap.add_argument("--workdir", type=Path, help="keep the processes' logs here (default: a temp dir)")
    args = ap.parse_args(argv)
    model = args.model
    if model is None:
        from apt_policy.demo.model_cache import ensure_demo_export

        model = ensure_demo_export()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="apt_soak_"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = run_soak(
        model, args.duration, workdir, args.rate, args.switch_every, args.dropout_every,
        args.dropout_s, args.sample_every, trajectory_stamp=args.trajectory_stamp,
    )  # fmt: skip
    print(f"logs: {workdir}")
    found = problems(report, args.warmup, args.rss_mb)
    if args.out:
        args.out.write_text(json.dumps({**asdict(report), "problems": found}, indent=1))
    print(format_report(report, args.warmup))
    print("PASS" if not found else "FAIL: " + "; ".join(found))
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())
