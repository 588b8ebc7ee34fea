"""Demo: score generated predictions of several qualities on a synthetic GranD-f-format split.

No model or download is involved: a synthetic split (images + both GT files) is
written under ``--out``, degraded copies of its ground truth stand in for model
outputs (quality 1.0 = perfect), and the GCG evaluator scores each set with all
five metrics. ``make demo`` runs it.

Example::

    .venv/bin/python scripts/demo.py --n-images 24 --qualities 1.0 0.8 0.5 0.2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from altp.data.synthetic import write_noisy_predictions, write_synthetic_split

_COLUMNS = (
    ("meteor", "METEOR"),
    ("cider", "CIDEr"),
    ("ap50", "AP50"),
    ("miou", "mIoU"),
    ("recall", "Recall"),
)


def format_rows(rows: list[tuple[float, dict[str, Any], float]]) -> str:
    """Markdown table: one row per prediction quality, metrics x100, evaluation seconds."""
    lines = [
        "| predictions | " + " | ".join(name for _, name in _COLUMNS) + " | eval s |",
        "|---|" + "---:|" * (len(_COLUMNS) + 1),
    ]
    for quality, metrics, seconds in rows:
        cells = [f"{100 * metrics[key]:.1f}" for key, _ in _COLUMNS]
        lines.append(f"| quality {quality:g} | " + " | ".join(cells) + f" | {seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[tuple[float, dict[str, Any], float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--n-images", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qualities", type=float, nargs="+", default=[1.0, 0.8, 0.5, 0.2])
    parser.add_argument(
        "--text-encoder",
        default="minilm",
        help="recall's encoder: minilm, bert-base-uncased or a folder",
    )
    args = parser.parse_args(argv)

    from eval.gcg import evaluate  # heavy imports after argument errors
    from eval.text_encoders import TextEncoder

    t0 = time.perf_counter()
    gt_dir = write_synthetic_split(
        args.out / "data", split="val", n_images=args.n_images, seed=args.seed
    )
    print(
        f"synthetic split: {args.n_images} images under {args.out / 'data'} ({time.perf_counter() - t0:.1f} s)"
    )
    encoder = TextEncoder(name=args.text_encoder)  # loaded once, shared by every scoring
    rows = []
    for quality in args.qualities:
        pred_dir = args.out / f"predictions_q{quality:g}"
        write_noisy_predictions(gt_dir, "val", pred_dir, seed=args.seed, quality=quality)
        t = time.perf_counter()
        metrics = evaluate(pred_dir=pred_dir, gt_dir=gt_dir, split="val", text_encoder=encoder)
        rows.append((quality, metrics, time.perf_counter() - t))
    print()
    print("GCG metrics of generated predictions on a synthetic split (not a model, not GranD-f):")
    print(format_rows(rows))
    print(f"\ntext encoder {args.text_encoder}; total {time.perf_counter() - t0:.1f} s")
    summary = [{"quality": q, **{k: m[k] for k, _ in _COLUMNS}, "eval_s": s} for q, m, s in rows]
    (args.out / "demo_metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
