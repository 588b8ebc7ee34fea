"""Pruned vs unpruned prefill time beside the eq.-5 FLOPs ratio, for every registered pruner.

A CPU-sized Llama (8 layers, hidden 1024, MLP 2816, 16 heads, bf16, random
weights, SDPA) runs GLaMM's GCG prompt with 576 visual tokens on a 24x24 grid.
For each pruner (every registered one, plus ALTP and DDC at the LLM input:
``altp@0``, ``ddc@0``) and keep in {0.1, 0.25, 0.5}: unpruned and pruned prefills
alternate (so load drift hits both alike), and the reported ``time_ratio`` is
the median of the per-pair ratios over ``--runs`` pairs, the pruner's
selection work (``overhead_ms``, median of ``PruneRecord.select_ms``)
included. ``prep_ms`` is the median of ``pruner.prepare`` on a synthetic
336x336 image (superpixels; done at image load, off the critical path).
``flops_ratio`` is eq. 5 (:func:`altp.flops.flops_ratio`) for the same
token counts and stages, plus the selection work a method records as ``added_flops``
(DivPrune's distance matrix, VisionZip's merge and projection, DART's similarities).
The LLM-input pruners that read the vision tower (VisionZip, ``altp@0``) get random
CLIP-L-shaped signals and a GLaMM-shaped projector (:func:`synthetic_vision`).

Text token count: LLaMA's SentencePiece tokenizer is not available offline,
so the prompt's text tokens are estimated (:func:`estimate_text_tokens`).

    .venv/bin/python scripts/bench_prefill.py --json /tmp/bench_prefill.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from altp.flops import LLMShape, flops_ratio  # noqa: E402
from altp.models.tokenizer import gcg_prompt  # noqa: E402
from altp.pruners import available_pruners, build_pruner  # noqa: E402
from altp.pruning.base import VisionSignals  # noqa: E402
from altp.pruning.engine import PruningEngine  # noqa: E402

GRID = (24, 24)
V = GRID[0] * GRID[1]
KEEPS = (0.1, 0.25, 0.5)


def estimate_text_tokens(text: str) -> int:
    """Rough LLaMA token count: one per word, punctuation mark, newline, extra space in a run, and
    special tag (``<im_start>`` etc.); LLaMA keeps common English words whole."""
    tags = re.findall(r"<[a-z_/]+>|\[SEG\]", text)
    rest = re.sub(r"<[a-z_/]+>|\[SEG\]", " ", text)
    pieces = re.findall(r"\w+|[^\w\s]", rest)
    extra_spaces = sum(len(m) - 1 for m in re.findall(r" {2,}", rest))
    return len(tags) + len(pieces) + extra_spaces + rest.count("\n")


def prompt_split() -> tuple[int, int]:
    """(text tokens before the visual tokens incl. BOS and <im_start>, text tokens after them)."""
    before, after = gcg_prompt().split("<image>")
    return 1 + estimate_text_tokens(before), estimate_text_tokens(after)


def build_lm(seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=32007,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=4096,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(
        cfg, attn_implementation="sdpa", dtype=torch.bfloat16
    ).eval()


def synthetic_image(seed: int = 0) -> np.ndarray:
    """(336, 336, 3) uint8: smooth colour blobs plus one textured quadrant, so SLIC has work to do."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:336, 0:336] / 336.0
    img = np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in (0.0, 1.0, 2.0)], -1)
    img = (img * 0.5 + 0.5) * 200
    img[:168, :168] += rng.normal(0, 40, (168, 168, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


# The literal reading of ALTP's Algorithm 1 and its DDC ablation: pruning at the LLM input, ranked by CLS attention.
VARIANTS: dict[str, tuple[str, dict]] = {
    "altp@0": ("altp", {"layer": 0, "importance": "cls"}),
    "ddc@0": ("ddc", {"layer": 0, "importance": "cls"}),
}


def synthetic_vision(hidden: int, seed: int = 0) -> VisionSignals:
    """Random CLIP-L-shaped vision signals (1024-d features, 64-d keys) and a GLaMM-shaped projector into ``hidden``."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.nn.Sequential(torch.nn.Linear(1024, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
    proj = proj.to(torch.bfloat16).eval()
    return VisionSignals(
        cls_attention=torch.rand(1, V, generator=g).softmax(-1),
        features=torch.randn(1, V, 1024, generator=g).to(torch.bfloat16),
        keys=torch.randn(1, V, 64, generator=g).to(torch.bfloat16),
        project=proj,
    )


def _timed_prefill(
    engine: PruningEngine, embeds: torch.Tensor, start: int, prep: list, vision: VisionSignals | None = None
) -> tuple[float, float]:
    t0 = time.perf_counter()
    _, rec = engine.prefill(
        inputs_embeds=embeds, visual_start=start, num_visual=V, grid=GRID, prep=prep, last_only=True,
        vision=vision,
    )  # fmt: skip
    return (time.perf_counter() - t0) * 1e3, rec.select_ms


def bench(
    *, lm: LlamaForCausalLM, runs: int, warmup: int, pruners: list[str], out: Path | None = None,
    keeps: tuple[float, ...] = KEEPS,
) -> list[dict]:
    """Rows as described in the module docstring; written to ``out`` after every row (a long run
    on a shared machine keeps what it measured)."""
    n_before, n_after = prompt_split()
    num_text = n_before + n_after
    g = torch.Generator().manual_seed(0)
    embeds = (torch.randn(1, num_text + V, 1024, generator=g) * 0.5).to(torch.bfloat16)
    shape = LLMShape(hidden_size=1024, intermediate_size=2816, num_layers=8)
    base = PruningEngine(lm=lm, pruner=None)
    image = synthetic_image()
    rows = []
    vision = synthetic_vision(1024)
    for name in pruners:
        registered, extra = VARIANTS.get(name, (name, {}))
        for keep in keeps:
            pruner = build_pruner(registered, keep=keep, **extra)
            assert pruner is not None
            vis = vision if pruner.needs_vision else None
            prep_times = []
            for _ in range(3):
                t0 = time.perf_counter()
                p = pruner.prepare(image, GRID)
                prep_times.append((time.perf_counter() - t0) * 1e3)
            prep = [p]
            engine = PruningEngine(lm=lm, pruner=pruner)
            for _ in range(warmup):
                _timed_prefill(base, embeds, n_before, [None])
                _timed_prefill(engine, embeds, n_before, prep, vis)
            ratios, overheads, t_un, t_pr = [], [], [], []
            for _ in range(runs):
                a, _ = _timed_prefill(base, embeds, n_before, [None])
                b, sel = _timed_prefill(engine, embeds, n_before, prep, vis)
                ratios.append(b / a)
                overheads.append(sel)
                t_un.append(a)
                t_pr.append(b)
            _, rec = engine.prefill(
                inputs_embeds=embeds,
                visual_start=n_before,
                num_visual=V,
                grid=GRID,
                prep=prep,
                last_only=True,
                vision=vis,
            )
            fr = flops_ratio(
                num_text=num_text,
                num_visual=V,
                visual_kept=list(zip(rec.stage_layers, rec.kept_per_stage, strict=True)),
                shape=shape,
                added=float(rec.extras[0].get("added_flops", 0.0)),  # the method's own selection work
            )
            rows.append(
                {
                    "pruner": name,
                    "keep": keep,
                    "time_ratio": statistics.median(ratios),
                    "flops_ratio": fr,
                    "overhead_ms": statistics.median(overheads),
                    "prep_ms": statistics.median(prep_times),
                    "unpruned_ms": statistics.median(t_un),
                    "pruned_ms": statistics.median(t_pr),
                    # min/min: contention only ever adds time, so the fastest runs are the cleanest
                    "time_ratio_min": min(t_pr) / min(t_un),
                    "kept_per_stage": rec.kept_per_stage,
                    "stage_layers": rec.stage_layers,
                    "runs": runs,
                }
            )
            r = rows[-1]
            print(
                f"{name:8s} {keep:5.2f} {r['time_ratio']:10.3f} {fr:11.3f} {r['time_ratio'] / fr:8.2f} "
                f"{r['overhead_ms']:11.2f} {r['prep_ms']:8.1f} {r['unpruned_ms']:9.1f} {r['pruned_ms']:9.1f} "
                f"{r['time_ratio_min']:9.3f}",
                flush=True,
            )
            if out is not None:
                out.write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument(
        "--runs", type=int, default=10, help="timed unpruned/pruned pairs per row (>= 10)"
    )
    ap.add_argument("--warmup", type=int, default=2)
    # One thread by default: on a loaded shared CPU every multi-threaded op waits for descheduled
    # workers, a fixed cost per op that does not shrink with the token count and hides the speed-up
    # (measured here: one layer at 653/134 tokens took 734/561 ms on 2 threads, 298/59 ms on 1).
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)"
    )
    ap.add_argument("--pruners", nargs="*", help="default: every registered pruner")
    ap.add_argument("--keeps", type=float, nargs="*", default=list(KEEPS), help="default: 0.1 0.25 0.5")
    args = ap.parse_args()
    if args.runs < 10:
        ap.error("--runs must be >= 10 (medians of fewer runs are too noisy on a shared machine)")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.pruners or [p for p in available_pruners() if p != "none"] + list(VARIANTS)
    n_before, n_after = prompt_split()
    print(
        f"text tokens (estimated): {n_before} before + {n_after} after {V} visual; threads {torch.get_num_threads()}"
    )
    print(
        f"{'pruner':8s} {'keep':>5s} {'time_ratio':>10s} {'flops_ratio':>11s} {'t/f':>8s} "
        f"{'overhead_ms':>11s} {'prep_ms':>8s} {'full_ms':>9s} {'pruned_ms':>9s} {'min_ratio':>9s}"
    )
    # Built OUTSIDE inference mode: bf16 weights created as inference tensors made every CPU
    # prefill ~0.2 s slower here (a fixed cost that would hide the speed-up).
    lm = build_lm()
    with torch.inference_mode():
        rows = bench(lm=lm, runs=args.runs, warmup=args.warmup, pruners=names, out=args.json, keeps=tuple(args.keeps))
    if args.json:
        print(f"wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
