"""Train the embedded shapes GLaMM (seeded, CPU) and write it where build_glamm_shapes loads it.

Usage::

    .venv/bin/python scripts/train_shapes.py --out altp/models/assets/shapes \\
        [--steps 3000] [--seed 0] [--time-limit-min 60] [--ckpt runs/shapes_train/ckpt.pt]

Writes ``OUT/model.safetensors`` (float32), ``OUT/config.json`` (sizes),
``OUT/tokenizer/`` and ``OUT/train_log.jsonl`` (one line per log interval).
``--ckpt`` keeps model + optimiser state every ``--ckpt-every`` steps and
resumes from it when it exists, with the same data stream (the data of step s
is a function of the seed alone). ``--time-limit-min`` stops cleanly after the
step that crosses the limit and writes the weights trained so far.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from altp.data.synthetic import GENERATOR_VERSION  # noqa: E402
from altp.models.glamm import GLaMM, config_to_dict  # noqa: E402
from altp.models.glamm_build import shapes_config  # noqa: E402
from altp.models.tokenizer import TINY_TOKENIZER_DIR, load_glamm_tokenizer  # noqa: E402
from altp.train.loop import TrainConfig, make_optimizer, make_probe, seed_everything, train  # noqa: E402


class _TimeUp(Exception):
    pass


def build_untrained(seed: int) -> GLaMM:
    """The shapes architecture with transformers' default init, drawn after ``torch.manual_seed(seed)``."""
    tok, ids = load_glamm_tokenizer(TINY_TOKENIZER_DIR)
    torch.manual_seed(seed)
    return GLaMM(config=shapes_config(vocab_size=len(tok)), tokenizer=tok, token_ids=ids, name="glamm_shapes",
                 max_new_tokens=112)


def save_weights(model: GLaMM, out: Path, meta: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata=meta)
    (out / "config.json").write_text(json.dumps(config_to_dict(model.config), indent=1) + "\n", encoding="utf-8")
    # A copy, so later vocabulary changes to the tiny tokenizer cannot shift this model's ids.
    shutil.copytree(TINY_TOKENIZER_DIR, out / "tokenizer", dirs_exist_ok=True)


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    ap.add_argument("--w-dice", type=float, default=TrainConfig.w_dice)
    ap.add_argument("--w-probe", type=float, default=TrainConfig.w_probe)
    ap.add_argument("--log-every", type=int, default=TrainConfig.log_every)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-limit-min", type=float, default=None)
    ap.add_argument("--ckpt", type=Path, default=None, help="resumable checkpoint (model + optimiser)")
    ap.add_argument("--ckpt-every", type=int, default=100)
    args = ap.parse_args()

    cfg = replace(TrainConfig(), steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                  warmup=args.warmup, log_every=args.log_every, w_dice=args.w_dice, w_probe=args.w_probe)
    seed_everything(cfg.seed, threads=args.threads)
    model = build_untrained(cfg.seed)
    probe = make_probe(model, cfg)  # drawn after the model, so the model's init is unchanged
    opt = make_optimizer(model, cfg, probe)
    start = 0
    if args.ckpt is not None and args.ckpt.exists():
        ck = torch.load(args.ckpt, weights_only=True)
        model.load_state_dict(ck["model"])
        if probe is not None:
            probe.load_state_dict(ck["probe"])
        opt.load_state_dict(ck["opt"])
        start = int(ck["step"])
        print(f"resumed from {args.ckpt} at step {start}")
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train_log.jsonl"
    if start == 0:
        log_path.write_text("", encoding="utf-8")
    t_start = time.perf_counter()
    last = {"step": start}

    def log(row: dict[str, float]) -> None:
        row = {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}
        row["elapsed_min"] = round((time.perf_counter() - t_start) / 60, 2)
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def on_step(done: int) -> None:
        last["step"] = done
        if args.ckpt is not None and (done % args.ckpt_every == 0 or done == cfg.steps):
            tmp = args.ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done,
                        "probe": probe.state_dict() if probe is not None else None}, tmp)
            tmp.replace(args.ckpt)
        if args.time_limit_min is not None and time.perf_counter() - t_start > 60 * args.time_limit_min:
            raise _TimeUp

    try:
        train(model, cfg, start_step=start, opt=opt, log=log, on_step=on_step, probe=probe)
    except _TimeUp:
        print(f"time limit reached after step {last['step']}", flush=True)
    meta = {"steps_done": str(last["step"]), "git_sha": _git_sha(), "torch": torch.__version__,
            "data_generator_version": str(GENERATOR_VERSION),
            "train_config": json.dumps(asdict(cfg))}
    model.eval()
    save_weights(model, args.out, meta)
    print(f"wrote {args.out / 'model.safetensors'} after {last['step']} steps", flush=True)


if __name__ == "__main__":
    main()
