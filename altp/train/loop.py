"""The shapes training loop: seeded, single-process, CPU-sized.

Step ``s`` trains on samples ``s*B .. s*B+B-1`` of the "train" stream
(:func:`altp.train.samples.render_sample`), so every sample is new, the data
order is a function of the seed alone, and a resumed run sees the same data.
AdamW with linear warm-up and cosine decay to 10% of the peak; gradients
clipped to norm 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from altp.models.glamm import GLaMM
from altp.train.losses import PatchProbe, forward_losses
from altp.train.samples import TrainBatch, collate, render_sample

__all__ = ["TrainConfig", "make_batch", "make_optimizer", "make_probe", "seed_everything", "train", "train_step"]


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of the shipped shapes model (the defaults) -- see TRAINING.md."""

    seed: int = 0  # data stream and weight init
    steps: int = 5000
    batch_size: int = 4
    lr: float = 1e-3  # tiny models from scratch tolerate (and need) a high peak rate
    warmup: int = 100
    weight_decay: float = 0.01
    clip_grad: float = 1.0
    image_size: tuple[int, int] = (336, 336)  # square: CLIP's centre crop then loses nothing
    objects: tuple[int, int] = (2, 6)
    w_lm: float = 1.0
    w_bce: float = 2.0
    w_dice: float = 2.0  # GLaMM uses 0.5; from scratch the masks start learning much later with it
    w_probe: float = 1.0  # training-only patch probe (losses.PatchProbe); 0 disables it
    log_every: int = 10


def seed_everything(seed: int, threads: int = 2) -> None:
    """Seed torch, fix the thread count and ask for deterministic kernels."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=False)


def make_batch(model: GLaMM, cfg: TrainConfig, step: int, *, split: str = "train") -> TrainBatch:
    """Batch of step ``step``: samples ``step*B .. step*B+B-1`` of ``split``."""
    b = cfg.batch_size
    samples = [render_sample(seed=cfg.seed, index=step * b + i, split=split, image_size=cfg.image_size,
                             objects=cfg.objects) for i in range(b)]
    return collate(samples, tok=model.tokenizer, ids=model.token_ids, sam=model.grounding_encoder,
                   clip_size=model.clip_size)


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def make_probe(model: GLaMM, cfg: TrainConfig) -> PatchProbe | None:
    """The training-only patch probe on the projected visual tokens (None when ``w_probe`` is 0)."""
    return PatchProbe(model.llm.config.hidden_size) if cfg.w_probe > 0 else None


def make_optimizer(model: GLaMM, cfg: TrainConfig, probe: PatchProbe | None = None) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases and embedding-like vectors (dim < 2)."""
    params = [*model.parameters(), *(probe.parameters() if probe is not None else ())]
    decay = [p for p in params if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in params if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def train_step(model: GLaMM, opt: torch.optim.Optimizer, batch: TrainBatch, cfg: TrainConfig,
               lr: float, probe: PatchProbe | None = None) -> dict[str, float]:
    """One optimiser step; returns the losses and metrics as floats."""
    model.train()
    for group in opt.param_groups:
        group["lr"] = lr
    out = forward_losses(model, batch, w_lm=cfg.w_lm, w_bce=cfg.w_bce, w_dice=cfg.w_dice, probe=probe,
                         w_probe=cfg.w_probe)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    opt.step()
    return {k: float(v.detach()) for k, v in out.items()} | {"grad_norm": float(grad_norm), "lr": lr}


def train(
    model: GLaMM, cfg: TrainConfig, *, start_step: int = 0, opt: torch.optim.Optimizer | None = None,
    log: Callable[[dict[str, float]], None] = print, on_step: Callable[[int], None] | None = None,
    probe: PatchProbe | None = None,
) -> torch.optim.Optimizer:
    """Train ``model`` in place from ``start_step`` to ``cfg.steps``.

    Args:
        log: receives averaged metrics every ``cfg.log_every`` steps.
        on_step: called after each step with the number of finished steps
            (checkpointing, evaluation, time limits -- raise to stop).
        probe: the training-only patch probe (:func:`make_probe`), trained alongside;
            ``opt`` must then hold its parameters too.
    """
    opt = opt or make_optimizer(model, cfg, probe)
    acc: dict[str, float] = {}
    count, t0 = 0, time.perf_counter()
    for step in range(start_step, cfg.steps):
        batch = make_batch(model, cfg, step)
        stats = train_step(model, opt, batch, cfg, _lr_at(cfg, step), probe)
        for k, v in stats.items():
            acc[k] = acc.get(k, 0.0) + v
        count += 1
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            row = {k: v / count for k, v in acc.items()}
            row |= {"step": done, "s_per_step": (time.perf_counter() - t0) / count}
            log(row)
            acc, count, t0 = {}, 0, time.perf_counter()
        if on_step is not None:
            on_step(done)
    return opt
