"""``apt-data`` (info / episodes / export / replay) and ``apt-replay``: recordings offline, no ROS needed.

apt-data info BAG                          topics, types, counts, files, size, duration
apt-data episodes BAG [--json]             episode boundaries, outcomes, takeover intervals
apt-data export BAG OUT [--fps 10] [--camera TOPIC=NAME ...]
                                           LeRobotDataset v3.0 (see apt_policy.data.lerobot)
apt-replay BAG --model EXPORT_OR_BUNDLE [--backend auto] [--seed 0] [--json FILE] [--out BAG2]
                                           model vs recorded chunks, per step (apt_policy.data.replay)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "replay_main"]


def _info(args: argparse.Namespace) -> int:
    import yaml

    from apt_policy.data.bag import bag_size, topics_of

    meta = yaml.safe_load((args.bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    topics = topics_of(args.bag)
    print(f"bag        {args.bag} ({bag_size(args.bag) / 1e6:.2f} MB, {meta['storage_identifier']})")
    print(f"files      {', '.join(meta['relative_file_paths'])}")
    print(f"duration   {meta['duration']['nanoseconds'] * 1e-9:.3f} s, {meta['message_count']} messages")
    width = max((len(t) for t in topics), default=0)
    for topic, (type_name, count) in sorted(topics.items()):
        print(f"  {topic.ljust(width)}  {count:>7}  {type_name}")
    return 0


def _episodes(args: argparse.Namespace) -> int:
    from apt_policy.data.episodes import episodes_json, find_episodes

    episodes = find_episodes(args.bag)
    if args.json:
        print(episodes_json(episodes))
        return 0
    t0 = episodes[0].start_ns if episodes else 0
    for e in episodes:
        takeover = sum((b - a) for a, b in e.takeover) * 1e-9
        print(
            f"{e.index:>3}  {(e.start_ns - t0) * 1e-9:8.2f} s  {e.duration_s:7.2f} s  {e.outcome:<16}"
            f" {e.source:<11} takeover {takeover:5.2f} s  {e.instruction!r}"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    from apt_policy.data.lerobot import ExportOptions, export_lerobot, summary_lines

    cameras = dict(c.split("=", 1) for c in args.camera) if args.camera else None
    options = ExportOptions(fps=args.fps, cameras=cameras, codec=args.codec)
    for line in summary_lines(export_lerobot(args.bag, args.out, options)):
        print(line)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from apt_policy.data.replay import ReplayOptions, format_table, replay, write_replayed
    from apt_policy.runtime.load import load_policy

    options: dict[str, object] = {"seed": args.seed} if args.backend in ("auto", "onnxruntime") else {}
    policy = load_policy(args.model, backend=args.backend, **options)
    cameras = dict(c.split("=", 1) for c in args.camera) if args.camera else None
    opts = ReplayOptions(seed=args.seed, cameras=cameras, max_chunks=args.max_chunks)
    result = replay(args.bag, policy, opts)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.out:
        print(f"wrote {write_replayed(args.bag, args.out, result, opts.chunk_topic)} (replayed chunks)")
    if args.tolerance is not None and result.max_abs > args.tolerance:
        print(f"FAIL: max |d| {result.max_abs:.3g} > tolerance {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


def _add_replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", type=Path, help="recording (rosbag2 directory)")
    p.add_argument("--model", type=Path, required=True, help="export dir, engine dir or bundle")
    p.add_argument("--backend", default="auto", help="auto | onnxruntime | tensorrt | torch")
    p.add_argument("--seed", type=int, default=0, help="flow noise seed (per chunk: seed, chunk_id)")
    p.add_argument("--camera", action="append", default=[], help="MODEL_CAMERA=TOPIC (default: by order)")
    p.add_argument("--max-chunks", type=int, default=0, help="replay only the first N chunks")
    p.add_argument("--json", type=Path, default=None, help="write the per-step differences as JSON")
    p.add_argument("--out", type=Path, default=None, help="write the recording with the replayed chunks")
    p.add_argument("--tolerance", type=float, default=None, help="exit 1 when max |d| exceeds it")
    p.set_defaults(func=_replay)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="apt-data", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="what a recording holds")
    s.add_argument("bag", type=Path)
    s.set_defaults(func=_info)
    s = sub.add_parser("episodes", help="episode boundaries and outcomes")
    s.add_argument("bag", type=Path)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_episodes)
    s = sub.add_parser("export", help="LeRobotDataset v3.0")
    s.add_argument("bag", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--fps", type=float, default=10.0)
    s.add_argument("--camera", action="append", default=[], help="COMPRESSED_TOPIC=NAME (default: every one)")
    s.add_argument("--codec", default="libx264", help="libx264 (h264) | libsvtav1 (av1) | mpeg4")
    s.set_defaults(func=_export)
    _add_replay_args(sub.add_parser("replay", help="= apt-replay"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args))


def replay_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="apt-replay", description="Replay a recording through a model offline.")
    _add_replay_args(p)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
