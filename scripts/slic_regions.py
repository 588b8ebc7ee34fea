"""How many regions SLIC really gives: realised superpixels against the target N.

scikit-image's ``slic`` treats ``n_segments`` as a target; with its default
connectivity enforcement, segments under half the expected size are merged into a
neighbour, so far fewer regions than N can remain. This prints, for the first
images of a split as GLaMM's vision tower sees them (336 px), per SLIC setting:
the mean / min / max of SLIC's superpixels and of the regions that own at least
one of the 24 x 24 visual tokens, and the share of images left with a single
region (where ALTP and DDC are plain FastV). No model is loaded.

    .venv/bin/python scripts/slic_regions.py --data shapes_val --images 100 --n 3,7,10,15 --c 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from altp.data.resolve import resolve_split  # noqa: E402
from altp.methods.superpixels import compute_regions  # noqa: E402
from altp.models.pixels import clip_resize_crop  # noqa: E402


def _stats(xs: list[int]) -> str:
    a = np.asarray(xs)
    return f"{a.mean():5.2f} {a.min():3d} {a.max():3d}"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shapes_val", help="a conf/data/ config")
    parser.add_argument("--images", type=int, default=100, help="first N images of the split")
    parser.add_argument("--n", default="10", help="SLIC targets, comma-separated")
    parser.add_argument("--c", default="5", help="compactness values, comma-separated")
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=336, help="the vision tower's input side")
    parser.add_argument("--grid", type=int, default=24, help="patch grid side")
    args = parser.parse_args(argv)

    data = OmegaConf.load(ROOT / "conf" / "data" / f"{args.data}.yaml")
    data.root = str(ROOT / "data" / "shapes") if "shapes" in args.data else data.root
    split = resolve_split(data)
    images = [clip_resize_crop(split.load_image(s), args.size) for s in list(split)[: args.images]]
    rows = []
    print(f"{args.data}, first {len(images)} images, {args.size} px, {args.grid}x{args.grid} grid, "
          f"sigma {args.sigma}")  # fmt: skip
    print("   N     C  connectivity | superpixels mean min max | regions with a token mean min max | single")
    for n in (int(x) for x in args.n.split(",")):
        for c in (float(x) for x in args.c.split(",")):
            for enforce in (True, False):
                maps = [compute_regions(im, (args.grid, args.grid), n_segments=n, compactness=c,
                                        sigma=args.sigma, enforce_connectivity=enforce) for im in images]  # fmt: skip
                segs = [m.num_segments for m in maps]
                regs = [m.num_regions for m in maps]
                single = float(np.mean([r == 1 for r in regs]))
                rows.append({"n_segments": n, "compactness": c, "enforce_connectivity": enforce,
                             "segments": segs, "regions": regs, "single_region_share": single})  # fmt: skip
                print(f"{n:4d} {c:5g}  {str(enforce):>12} | {_stats(segs):>24} | {_stats(regs):>33} | "
                      f"{100 * single:5.1f} %")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
