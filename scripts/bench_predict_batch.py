"""Model throughput at several batch sizes: images/s of ``predict_batch``, and the ratio to batch 1.

Model time only: the images are preprocessed (``model.preprocess``) and the
pruner's ``prepare`` run before the clock starts, as a DataLoader would have
done; each batch size then predicts the same images, and the script checks that
every batch size gives every image the batch-1 caption, phrases and masks.
The images are the first ``--images`` of the shapes val split, rendered in memory
exactly as the split's files are.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_predict_batch.py            # glamm_shapes, fastv 0.1
    .venv/bin/python scripts/bench_predict_batch.py --pruner none --batch-sizes 1 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import altp.pruners  # noqa: E402, F401  (registers the built-in pruners)
from altp.models import build_model  # noqa: E402
from altp.pruning import build_pruner  # noqa: E402
from altp.train.samples import render_sample  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="glamm_shapes")
    ap.add_argument("--pruner", default="fastv")
    ap.add_argument("--keep", type=float, default=0.1)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the acceptance bar uses 1)")
    ap.add_argument("--repeats", type=int, default=3, help="best of this many passes per batch size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model(args.model)
    pruner = build_pruner(args.pruner, keep=args.keep)
    images = [Image.fromarray(render_sample(seed=0, index=i, split="val").image) for i in range(args.images)]
    inputs = [model.preprocess(im) for im in images]
    preps = [pruner.prepare(x.vision_image, model.grid) if pruner is not None else None for x in inputs]
    seeds = list(range(len(inputs)))

    def run(bs: int) -> tuple[float, list]:
        t0 = time.perf_counter()
        preds = []
        for i in range(0, len(inputs), bs):
            preds += model.predict_batch(inputs[i : i + bs], pruner=pruner, preps=preps[i : i + bs],
                                         seeds=seeds[i : i + bs])  # fmt: skip
        return time.perf_counter() - t0, preds

    run(min(args.batch_sizes))  # warm-up
    # Repeats interleave the batch sizes, so load from other processes drifts into all of them alike.
    best = {bs: float("inf") for bs in args.batch_sizes}
    outputs: dict[int, list] = {}
    for _ in range(args.repeats):
        for bs in args.batch_sizes:
            secs, outputs[bs] = run(bs)
            best[bs] = min(best[bs], secs)
    first = args.batch_sizes[0]
    base_rate, base = len(inputs) / best[first], outputs[first]
    print(f"{args.model}, pruner {args.pruner} keep {args.keep}, {len(inputs)} images, {args.threads} thread(s), "
          f"best of {args.repeats}")
    for bs in args.batch_sizes:
        rate = len(inputs) / best[bs]
        same = all(
            (a.caption, a.phrases) == (b.caption, b.phrases)
            and len(a.masks) == len(b.masks)
            and all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))
            for a, b in zip(base, outputs[bs], strict=True)
        )
        print(f"batch {bs:3d}: {rate:6.2f} images/s  x{rate / base_rate:4.2f} of batch {first}  "
              f"outputs {'identical' if same else 'DIFFER'}")

if __name__ == "__main__":
    main()
