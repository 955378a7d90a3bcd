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
after the node stopped, no contract violation, and every process alive to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

INSTRUCTIONS = ("reach the red block", "reach the green block", "reach the blue block")
SHM_PREFIX = "apt_images_"  # runtime.process_policy's image arena in /dev/shm


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
    samples: list[Sample] = field(default_factory=list)
    switches: int = 0
    dropouts: int = 0
    holds_seen: int = 0
    violations: dict[str, Any] = field(default_factory=dict)
    exited: dict[str, int | None] = field(default_factory=dict)
    shm_files_after: int = 0

    def baseline(self, warmup_s: float) -> Sample:
        after = [s for s in self.samples if s.t >= warmup_s]
        return after[0] if after else self.samples[0]


def _proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the inference child)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            children = []
        todo += [int(c) for c in children]
    return out


def _resources(pid: int) -> tuple[float, int, int]:
    """(RSS MB, open fds, threads) summed over the process tree of ``pid``."""
    rss_kb, fds, threads = 0, 0, 0
    for p in _proc_tree(pid):
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
    try:
        return sum(1 for name in os.listdir("/dev/shm") if name.startswith(SHM_PREFIX))
    except OSError:
        return 0


class _Probe:
    """Status, diagnostics and violations subscriber; instruction publisher; camera switch (own context)."""

    def __init__(self) -> None:
        import rclpy
        from apt_msgs.msg import PolicyStatus
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String
        from std_srvs.srv import SetBool

        from apt_policy.ros.qos import EVENTS, LATCHED

        self._ctx = rclpy.Context()
        rclpy.init(context=self._ctx)
        self.node = rclpy.create_node("soak_probe", context=self._ctx)
        self.status: Any = None
        self.violations: dict[str, Any] = {}
        self.holds = 0
        self._last_state: int | None = None
        self._string = String
        self.instruction = self.node.create_publisher(String, "/apt_policy/instruction", EVENTS)
        self.camera = self.node.create_client(SetBool, "/fake_camera/enable")
        self._set_bool = SetBool
        self.node.create_subscription(PolicyStatus, "/apt_policy/status", self._on_status, EVENTS)
        self.node.create_subscription(String, "/fake_franka/violations", self._on_violations, LATCHED)
        self._executor = SingleThreadedExecutor(context=self._ctx)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def _on_status(self, msg: Any) -> None:
        if msg.state == 2 and self._last_state != 2:  # entered HOLDING
            self.holds += 1
        self._last_state = msg.state
        self.status = msg

    def _on_violations(self, msg: Any) -> None:
        self.violations = json.loads(msg.data)

    def say(self, text: str) -> None:
        self.instruction.publish(self._string(data=text))

    def camera_enabled(self, on: bool) -> None:
        if self.camera.wait_for_service(timeout_sec=5.0):
            self.camera.call_async(self._set_bool.Request(data=on))

    def close(self) -> None:
        import rclpy

        self._executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._ctx)
        self._thread.join(2)


def _exe(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    return [str(exe)] if exe.exists() else [sys.executable, "-m", _MODULES[name]]


_MODULES = {
    "apt-fake-franka": "apt_policy.sim.fake_franka",
    "apt-fake-camera": "apt_policy.sim.fake_camera",
    "apt-policy-node": "apt_policy.ros.policy_node",
}


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
) -> SoakReport:
    """Run the soak (see the module docstring); processes and logs under ``workdir``."""
    env = {
        **os.environ,
        "ROS_DOMAIN_ID": str(domain if domain is not None else 1 + os.getpid() % 100),
        "ROS_LOG_DIR": str(workdir / "ros_log"),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    logs = {n: (workdir / f"{n}.log").open("wb") for n in ("franka", "camera", "node")}
    commands = {
        "franka": [*_exe("apt-fake-franka"), "--ros-args"],
        "camera": [*_exe("apt-fake-camera"), "--ros-args", "-p", "scene_seed:=3"],
        "node": [
            *_exe("apt-policy-node"), "--ros-args",
            "-p", f"model:={model}",
            "-p", f"control_rate:={float(rate)}",
            "-p", f"instruction:={INSTRUCTIONS[0]}",
            "-p", "inference_timeout:=5.0",
        ],
    }  # fmt: skip
    procs = {
        n: subprocess.Popen(cmd, env=env, stdout=logs[n], stderr=subprocess.STDOUT)
        for n, cmd in commands.items()
    }
    report = SoakReport(duration_s=duration_s, rate_hz=rate)
    probe = _Probe()
    try:
        deadline = time.monotonic() + 180
        while probe.status is None or probe.status.chunks_produced < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                raise RuntimeError(f"the node did not start streaming; logs in {workdir}")
            time.sleep(0.2)
        t0 = time.monotonic()
        next_switch, next_dropout, next_sample = switch_every, dropout_every, 0.0
        camera_back: float | None = None
        while (now := time.monotonic() - t0) < duration_s:
            if any(p.poll() is not None for p in procs.values()):
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
            if now >= next_sample:
                rss, fds, threads = _resources(procs["node"].pid)
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
            time.sleep(0.05)
        report.holds_seen = probe.holds
        time.sleep(1.5)  # the last violations report (1 Hz)
        report.violations = dict(probe.violations)
    finally:
        probe.close()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for name, p in procs.items():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            report.exited[name] = p.returncode
        for f in logs.values():
            f.close()
    report.shm_files_after = shm_files()
    return report


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
    if max(s.shm_files for s in report.samples) > 1:
        out.append(f"{max(s.shm_files for s in report.samples)} image arena files in /dev/shm at once")
    if report.shm_files_after:
        out.append(f"{report.shm_files_after} image arena files left in /dev/shm after the node stopped")
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
        f"({report.holds_seen} holds entered), contract violations at fake_franka: {total}; "
        f"exit codes {report.exited}"
    )
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
        args.dropout_s, args.sample_every,
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
