#!/usr/bin/env python3
"""Long fuzz run of the node's camera decoders (raw sensor_msgs/Image CDR bytes and CompressedImage).

    .venv/bin/python tools/fuzz_decoders.py --runs 1000000          # atheris (coverage-guided) when installed
    .venv/bin/python tools/fuzz_decoders.py --runs 1000000 --random # plain mutation loop, no atheris

Each input goes through exactly what the node runs on a received frame; anything but an RGB frame of the
declared size or a ConversionError with a reason is a failure (the process stops with the input saved to
fuzz-crash-*.bin). The short seeded version is test/node/test_fuzz_decoders.py, run by `make test`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np


def _seeds() -> list[bytes]:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    seeds = []
    for enc, ch in (("rgb8", 3), ("bgr8", 3), ("mono8", 1), ("rgba8", 4), ("16UC1", 2)):
        for h, w, pad in ((4, 5, 0), (3, 7, 3), (1, 1, 1)):
            msg = Image(height=h, width=w, encoding=enc, step=w * ch + pad)
            msg.header.frame_id = "cam"[: (h + w) % 4]
            msg.data = bytes((i * 7) % 256 for i in range(msg.step * h))
            seeds.append(serialize_message(msg))
    return seeds


def _check(data: bytes) -> None:
    from apt_policy.ros import conversions
    from apt_policy.ros.policy_node import _compressed_to_rgb
    from sensor_msgs.msg import CompressedImage

    try:
        rgb, _ = conversions.raw_image_to_rgb(data)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise AssertionError(f"decoded frame of shape {rgb.shape} / {rgb.dtype}")
    except conversions.ConversionError as exc:
        if not str(exc):
            raise AssertionError("rejection without a reason") from exc
    try:
        _compressed_to_rgb(CompressedImage(format="jpeg", data=data))
    except conversions.ConversionError as exc:
        if not str(exc):
            raise AssertionError("rejection without a reason") from exc


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        if op < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.7:
            del data[rng.randrange(len(data) + 1) :]
        elif op < 0.85:
            pos = rng.randrange(len(data) + 1)
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif len(data) >= 8:  # a plausible-looking but wrong uint32 (length or size field)
            pos = rng.randrange(4, len(data) - 3)
            data[pos : pos + 4] = rng.choice([0, 1, 2**31, 2**32 - 1, rng.randrange(2**32)]).to_bytes(
                4, "little"
            )
    return bytes(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random", action="store_true", help="plain mutation loop instead of atheris")
    args = ap.parse_args()
    seeds = _seeds()
    if not args.random:
        try:
            import atheris
        except ImportError:
            print("atheris is not installed: running the plain mutation loop (--random)")
        else:
            with atheris.instrument_imports():
                from apt_policy.ros import conversions, image_cdr  # noqa: F401
            corpus = f"/tmp/fuzz-decoders-corpus-{args.seed}"
            import os

            os.makedirs(corpus, exist_ok=True)
            for i, s in enumerate(seeds):
                with open(f"{corpus}/seed{i}", "wb") as f:
                    f.write(s)
            atheris.Setup(
                [
                    sys.argv[0],
                    f"-runs={args.runs}",
                    f"-seed={args.seed + 1}",
                    "-artifact_prefix=fuzz-crash-",
                    corpus,
                ],
                _check,
            )
            atheris.Fuzz()
            return 0
    rng = random.Random(args.seed)
    t0, rejected = time.monotonic(), 0
    for i in range(args.runs):
        data = _mutate(rng, rng.choice(seeds)) if rng.random() < 0.9 else rng.randbytes(rng.randint(0, 64))
        try:
            _check(data)
        except Exception:
            with open(f"fuzz-crash-{i}.bin", "wb") as f:
                f.write(data)
            raise
        if i and i % 100_000 == 0:
            print(f"{i} inputs, {time.monotonic() - t0:.0f} s", flush=True)
    print(
        f"{args.runs} inputs in {time.monotonic() - t0:.0f} s: no crash, every rejection with a reason"
        f" ({rejected})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
