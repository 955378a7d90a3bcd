"""How often does the DDS demo meet its goal? Pool the results of many demo runs.

One demo run is five episodes, so one run says little about a goal like "≥ 90 % success, 0 contract
violations". This reads the output directories of any number of runs (``python -m apt_policy.demo --out DIR``
or ``make demo``) and reports:

* the runs where every episode succeeded, where that came with 0 contract violations, each with a 95 %
  Wilson interval;
* per episode (by name): successes, and the final distance to the block (min / median / max);
* DDS delivery hold-ups per run (fake_franka's arrival logs, as ``bench.restarts`` counts them), each with
  when its held command was written after the run's last process start (the start times rcl gives its log
  files, ``logs/ros/<exe>_<pid>_<ms>.log``), and the contract violations.

    python -m apt_policy.bench.demo_runs OUT1 OUT2 ... [--json FILE]

Directories without a ``report.json`` (a run that stopped early) are listed as left out, not dropped
silently.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from apt_policy.bench.restarts import hold_ups, read_arrivals

__all__ = ["DemoRun", "pool", "process_starts", "read_run", "wilson_interval"]


@dataclass(frozen=True)
class DemoRun:
    """One demo run: per-episode results in episode order, its contract violations and hold-ups."""

    path: str
    episodes: tuple[str, ...]
    success: tuple[bool, ...]
    final_distance_m: tuple[float | None, ...]
    violations: int
    hold_ups_ms: tuple[float, ...]
    # per hold-up: s from the last process start to the held command's write (None without ROS logs)
    hold_ups_after_start_s: tuple[float | None, ...] = ()

    @property
    def all_succeeded(self) -> bool:
        return all(self.success)


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % (by default) Wilson score interval of a binomial proportion; (0, 1) with no trials."""
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


_ROS_LOG = re.compile(r"_\d+_(\d{10,})\.log$")  # rcl's log file name: <exe>_<pid>_<start ms>.log


def process_starts(ros_log_dir: Path) -> list[float]:
    """System-clock start times (s) of the processes that logged to ``ros_log_dir``, in order."""
    found = (_ROS_LOG.search(f.name) for f in ros_log_dir.glob("*.log")) if ros_log_dir.is_dir() else ()
    return sorted(int(m.group(1)) / 1e3 for m in found if m)


def read_run(out: Path, threshold_s: float = 0.15) -> DemoRun:
    """A demo output directory: ``report.json``, ``logs/<episode>_arrivals.json`` and ``logs/ros``."""
    report = json.loads((out / "report.json").read_text())
    episodes = report["episodes"]
    starts = process_starts(out / "logs" / "ros")
    delays: list[float] = []
    after_start: list[float | None] = []
    for episode in episodes:
        log = out / "logs" / f"{episode['name']}_arrivals.json"
        if log.exists():
            sent, received = read_arrivals(log)
            for k, d in hold_ups(sent, received, threshold_s):
                delays.append(1e3 * d)
                after_start.append(float(sent[k]) - starts[-1] if starts else None)
    return DemoRun(
        path=str(out),
        episodes=tuple(str(e["name"]) for e in episodes),
        success=tuple(bool(e["success"]) for e in episodes),
        final_distance_m=tuple(e.get("final_distance_m") for e in episodes),
        violations=int(report["summary"]["robot_violations"]),
        hold_ups_ms=tuple(delays),
        hold_ups_after_start_s=tuple(after_start),
    )


def pool(runs: list[DemoRun]) -> dict[str, Any]:
    """The pooled figures (see the module docstring) as a JSON-ready dict."""
    if not runs:
        raise ValueError("no demo runs to pool")
    n = len(runs)
    full = sum(r.all_succeeded for r in runs)
    clean = sum(r.all_succeeded and r.violations == 0 for r in runs)
    per_episode: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(name for r in runs for name in r.episodes):
        results = [
            (s, d)
            for r in runs
            for e, s, d in zip(r.episodes, r.success, r.final_distance_m, strict=True)
            if e == name
        ]
        dist = np.array([d for _, d in results if d is not None], np.float64) * 100.0
        per_episode[name] = {
            "runs": len(results),
            "successes": sum(s for s, _ in results),
            "final_distance_cm": None
            if dist.size == 0
            else {"min": float(dist.min()), "median": float(np.median(dist)), "max": float(dist.max())},
        }
    return {
        "runs": n,
        "all_succeeded": {"runs": full, "interval95": wilson_interval(full, n)},
        "all_succeeded_0_violations": {"runs": clean, "interval95": wilson_interval(clean, n)},
        "episodes": per_episode,
        "violations": {
            "total": sum(r.violations for r in runs),
            "runs_with_any": sum(r.violations > 0 for r in runs),
        },
        "hold_ups": {
            "total": sum(len(r.hold_ups_ms) for r in runs),
            "runs_with_any": sum(bool(r.hold_ups_ms) for r in runs),
            "ms": sorted(d for r in runs for d in r.hold_ups_ms),
            "after_last_process_start_s": sorted(
                t for r in runs for t in r.hold_ups_after_start_s if t is not None
            ),
        },
    }


def format_pooled(pooled: dict[str, Any], skipped: list[str]) -> str:
    n = pooled["runs"]

    def share(key: str) -> str:
        k, (lo, hi) = pooled[key]["runs"], pooled[key]["interval95"]
        return f"{k} of {n} ({100 * k / n:.0f} %; 95 % interval {100 * lo:.0f}-{100 * hi:.0f} %)"

    lines = [
        f"demo runs            {n}" + (f" ({len(skipped)} without report.json left out)" if skipped else ""),
        f"every episode        {share('all_succeeded')}",
        f"... and 0 violations {share('all_succeeded_0_violations')}",
        f"contract violations  {pooled['violations']['total']} in"
        f" {pooled['violations']['runs_with_any']} runs",
        f"DDS hold-ups         {pooled['hold_ups']['total']} in {pooled['hold_ups']['runs_with_any']} runs"
        + (
            f" ({min(pooled['hold_ups']['ms']):.0f}-{max(pooled['hold_ups']['ms']):.0f} ms)"
            if pooled["hold_ups"]["ms"]
            else ""
        )
        + (
            f", {min(when):.1f}-{max(when):.1f} s after the last process start"
            if (when := pooled["hold_ups"]["after_last_process_start_s"])
            else ""
        ),
        "",
        f"{'episode':<12}{'success':>14}  final distance min / median / max",
    ]
    for name, e in pooled["episodes"].items():
        d = e["final_distance_cm"]
        dist = "-" if d is None else f"{d['min']:.2f} / {d['median']:.2f} / {d['max']:.2f} cm"
        lines.append(f"{name:<12}{e['successes']:>7} of {e['runs']:<4}  {dist}")
    lines += [f"left out: {path}" for path in skipped]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outs", nargs="+", type=Path, help="demo output directories (--out of each run)")
    ap.add_argument("--threshold-ms", type=float, default=150.0, help="a command this late is a hold-up")
    ap.add_argument("--json", type=Path, help="also write the pooled figures and every run here")
    args = ap.parse_args(argv)
    runs, skipped = [], []
    for out in args.outs:
        if (out / "report.json").is_file():
            runs.append(read_run(out, args.threshold_ms / 1e3))
        else:
            skipped.append(str(out))
    if not runs:
        print(f"no report.json in any of {len(args.outs)} directories", file=sys.stderr)
        return 2
    pooled = pool(runs)
    print(format_pooled(pooled, skipped))
    if args.json:
        args.json.write_text(
            json.dumps({**pooled, "skipped": skipped, "runs_detail": [asdict(r) for r in runs]}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
