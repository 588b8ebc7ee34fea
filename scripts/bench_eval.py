"""Time the GCG evaluator on a synthetic GranD-f-sized split (2,500 images by default).

    .venv/bin/python scripts/bench_eval.py [--root /tmp/bench_eval] [--n-images 2500]

The split and its predictions (realistic noise: missed, spurious, shifted and
eroded masks, paraphrased phrases; see :mod:`altp.data.synthetic`) are generated
once under ``--root`` and reused. The timed part is what a user runs: import the
evaluator, load the encoder, start Java, score all five metrics. PTB tokenizing and
METEOR run in a worker thread beside the other metrics (``meteor`` is its time
from its start); ``meteor_wait`` is what the main thread still waited for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _prepare(root: Path, *, n_images: int, seed: int, quality: float) -> Path:
    from altp.data.synthetic import write_noisy_predictions, write_synthetic_split

    gt_dir = root / "annotations"
    stamp = root / "bench.json"
    want = {"n_images": n_images, "seed": seed, "quality": quality}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return gt_dir
    t = time.perf_counter()
    gt_dir = write_synthetic_split(root, split="val", n_images=n_images, seed=seed)
    write_noisy_predictions(gt_dir, "val", root / "pred", seed=seed + 1, quality=quality)
    stamp.write_text(json.dumps(want))
    print(
        f"generated {n_images} images + predictions in {time.perf_counter() - t:.1f} s under {root}"
    )
    return gt_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_eval"))
    parser.add_argument("--n-images", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=float, default=0.6)
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--json", type=Path, default=None, help="write metrics and timings here")
    args = parser.parse_args()
    gt_dir = _prepare(args.root, n_images=args.n_images, seed=args.seed, quality=args.quality)

    t0 = time.perf_counter()
    from eval.gcg import evaluate, format_table

    t_import = time.perf_counter() - t0
    timings: dict[str, float] = {}
    metrics = evaluate(
        pred_dir=args.root / "pred",
        gt_dir=gt_dir,
        split="val",
        text_encoder=args.text_encoder,
        timings=timings,
    )
    wall = time.perf_counter() - t0
    print(format_table(metrics))
    print(f"\nwall time (s) on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}:")
    print(f"  {'import':<14}{t_import:7.2f}")
    for name in ("load", "encoder", "ap50", "miou", "recall", "cider", "meteor", "meteor_wait"):
        print(f"  {name:<14}{timings[name]:7.2f}")
    print(f"  {'total':<14}{wall:7.2f}  (import + evaluate, Java start included)")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"metrics": metrics, "timings": timings, "import_s": t_import, "wall_s": wall},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
