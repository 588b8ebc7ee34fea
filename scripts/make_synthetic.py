"""Write a synthetic GCG split in GranD-f's format, optionally with noisy predictions.

Example::

    .venv/bin/python scripts/make_synthetic.py --out data/synthetic --split val --n-images 200 \\
        --seed 0 --pred-dir runs/noisy_q07 --quality 0.7
"""

from __future__ import annotations

import argparse
from pathlib import Path

from altp.data.synthetic import write_noisy_predictions, write_synthetic_split


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="root: gets annotations/ and images/"
    )
    parser.add_argument("--split", default="val", help="split name (val, test, train, ...)")
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=320, help="smallest image side, pixels")
    parser.add_argument("--max-size", type=int, default=1024, help="largest image side, pixels")
    parser.add_argument("--min-objects", type=int, default=1)
    parser.add_argument("--max-objects", type=int, default=8)
    parser.add_argument(
        "--pred-dir", type=Path, help="also write noisy GLaMM-format predictions here"
    )
    parser.add_argument("--quality", type=float, default=0.7, help="prediction quality in [0, 1]")
    args = parser.parse_args(argv)

    gt_dir = write_synthetic_split(
        args.out,
        split=args.split,
        n_images=args.n_images,
        seed=args.seed,
        image_size_range=(args.min_size, args.max_size),
        objects_range=(args.min_objects, args.max_objects),
    )
    print(f"wrote {args.n_images} images of split {args.split!r}: annotations in {gt_dir}")
    if args.pred_dir is not None:
        write_noisy_predictions(
            gt_dir, args.split, args.pred_dir, seed=args.seed, quality=args.quality
        )
        print(f"wrote predictions (quality {args.quality}) to {args.pred_dir}")
    return gt_dir


if __name__ == "__main__":
    main()
