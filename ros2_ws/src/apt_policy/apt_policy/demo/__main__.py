"""``python -m apt_policy.demo`` (what ``make demo`` runs); see ``apt_policy.demo.run`` and docs/DEMO.md."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from apt_policy.demo.run import DemoError, DemoOptions, rebuild_report, run_demo


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m apt_policy.demo",
        description="Train (cached), export, verify, and run the APT policy node closed loop on the "
        "simulated FR3 over ROS 2; writes report.json, report.png and episode.mp4.",
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default demo_out)")
    p.add_argument("--model", type=Path, default=None, help="use this export dir instead of the demo model")
    p.add_argument(
        "--bundle", type=Path, default=None, help="a trained bundle: export it (unless --model) and verify"
    )
    p.add_argument("--seed", type=int, default=20_000, help="scene seed of the first episode (default 20000)")
    p.add_argument("--switch-after", type=float, default=1.0, help="s before the instruction switch (1.0)")
    p.add_argument("--timeout", type=float, default=12.0, help="max seconds per episode (default 12)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="max s for the node to start (120)")
    p.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: 101 + pid %% 100)")
    p.add_argument("--params-file", type=Path, default=None, help="node parameters (default config/sim.yaml)")
    p.add_argument("--video-fps", type=float, default=15.0, help="recorded camera frames per second (15)")
    p.add_argument(
        "--latency",
        default="",
        help="simulated inference latency (simulation only): none | fixed:<ms> | orin | thor | rtx4090",
    )
    p.add_argument(
        "--chunk-execution",
        default=None,
        choices=("auto", "rtc", "crossfade", "ensemble", "none"),
        help="the node's chunk_execution (default: the params file's, else auto)",
    )
    p.add_argument(
        "--family",
        default="apt",
        choices=("apt", "action_prior", "action_distillation"),
        help="the seed system whose cached demo model runs (default apt; docs/ACTION_PRIOR.md, "
        "docs/ACTION_DISTILLATION.md; with --model/--bundle: the family of that model's node settings)",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the report from <out>/recording/")
    return p


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # same clean-up path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Started in the background by a shell (`make demo &`, CI), SIGINT arrives ignored and Python would
    # never raise KeyboardInterrupt: install the handler explicitly so Ctrl-C always stops every process.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.report_only:
            return rebuild_report(args.out.resolve(), args.params_file, args.video_fps)
        opts = DemoOptions(
            out=args.out,
            model=args.model,
            bundle=args.bundle,
            seed=args.seed,
            switch_after_s=args.switch_after,
            timeout_s=args.timeout,
            startup_timeout_s=args.startup_timeout,
            domain_id=args.domain_id,
            video_fps=args.video_fps,
            params_file=args.params_file,
            latency=args.latency,
            chunk_execution=args.chunk_execution,
            family=args.family,
        )
        return run_demo(opts)
    except DemoError as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted: every process it started has been stopped", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
