"""The engine's planning and selection: a prefill's :class:`PrunePlan`, and one stage's choice.

:func:`plan_prefill` asks the pruner for its stages on the prompt's shape and sets up the
plan's book-keeping; :func:`select_stage` scores the visual tokens at a stage (the last
token's attention row, recomputed from the score layer's q/k) and hands the pruner its
:class:`PruneContext`. The layer loop that calls them is :class:`altp.pruning.engine.PruningEngine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from altp.pruning._plan import PrunePlan, StageState
from altp.pruning._scores import last_row_attention, layer_keys
from altp.pruning.base import PruneContext, Pruner, PruneStage, ScheduleInfo, VisionSignals

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import DynamicCache, PretrainedConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

__all__ = ["plan_prefill", "select_stage"]


def plan_prefill(
    *,
    pruner: Pruner | None,
    config: PretrainedConfig,
    num_layers: int,
    embeds: torch.Tensor,
    visual_start: int,
    num_visual: int,
    grid: tuple[int, int],
    prep: Any,
    seed: int | Sequence[int],
) -> PrunePlan:
    """The plan of one prefill over ``embeds`` (B, N, D): the pruner's stages on this shape (none unpruned).

    Raises:
        ValueError: the visual span does not fit, the grid has another cell count, or ``prep``
            has not one entry per sample.
    """
    b, n, _ = embeds.shape
    if not (0 <= visual_start and visual_start + num_visual <= n and num_visual >= 1):
        raise ValueError(
            f"visual span [{visual_start}, {visual_start + num_visual}) does not fit {n} tokens"
        )
    if grid[0] * grid[1] != num_visual:
        raise ValueError(f"grid {grid} has {grid[0] * grid[1]} cells but num_visual={num_visual}")
    prep_t = tuple(prep) if prep is not None else (None,) * b
    if len(prep_t) != b:
        raise ValueError(f"prep has {len(prep_t)} entries for a batch of {b}; pass one per sample")
    cfg = config
    stages: list[PruneStage] = []
    if pruner is not None:
        info = ScheduleInfo(
            num_visual=num_visual,
            num_text=n - num_visual,
            num_layers=num_layers,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            grid=grid,
        )
        stages = list(pruner.schedule(info))
    return PrunePlan(
        stages=stages,
        batch=b,
        num_prompt=n,
        visual_start=visual_start,
        num_visual=num_visual,
        grid=grid,
        prep=prep_t,
        seed=seed if isinstance(seed, int) else tuple(int(x) for x in seed),
        num_layers=num_layers,
        pruner_name=type(pruner).__name__,
        device=embeds.device,
    )


def select_stage(
    *,
    pruner: Pruner,
    layers: Sequence[LlamaDecoderLayer],
    st: StageState,
    plan: PrunePlan,
    h: torch.Tensor,
    pe: tuple[torch.Tensor, torch.Tensor],
    score_in: Any,
    cache: DynamicCache | None,
    norm: Callable[[torch.Tensor], torch.Tensor],
    vision: VisionSignals | None,
) -> None:
    """Score and choose at stage ``st`` (``h`` (B, L, D) is its layer's input, ``pe`` its RoPE) into ``plan``.

    ``score_in`` is the (hidden, RoPE) input of the stage's score layer when it ran before the
    stage's layer (``cache`` then holds that layer's post-RoPE keys). ``norm`` is the model's
    final norm (for ``hidden_normed``), ``vision`` the batch's vision-tower signals.
    """
    timer = plan.timer()
    scores = keys = None
    sl, signals = st.stage.score_layer, st.stage.signals
    if sl is not None and (pruner.needs_scores or "keys" in signals):
        h_s, (cos, sin) = score_in if sl < st.stage.layer else (h, pe)
        # The score layer's cached keys are exactly its input's post-RoPE keys when it ran on this token set.
        # (cache.layers is typed with linear-attention layers too; a Llama cache holds DynamicLayers)
        cached = cache.layers[sl].keys if (cache is not None and sl < st.stage.layer) else None  # pyright: ignore[reportAttributeAccessIssue]
        layer_k = cached if cached is not None else layer_keys(layers[sl], h_s, cos, sin)  # (B, H_kv, L, hd)
        if pruner.needs_scores:
            row = last_row_attention(layer=layers[sl], hidden=h_s, cos=cos, sin=sin, keys=layer_k)  # (B, L)
            a = plan.visual_offset
            scores = row[:, a : a + plan.num_current]  # (B, V_cur) the visual columns
        if "keys" in signals:
            keys = layer_k.transpose(1, 2).flatten(2)  # (B, L, H_kv * hd)
    ctx = PruneContext(
        stage=st.index,
        layer=st.stage.layer,
        n_keep=st.stage.n_keep,
        num_visual=plan.num_visual,
        grid=plan.grid,
        visual_ids=plan.visual_ids,
        scores=scores,
        prep=plan.prep,
        seed=plan.seed,
        hidden=h,
        visual_start=plan.visual_offset,
        keys=keys,
        hidden_normed=norm(h) if "hidden_normed" in signals else None,
        vision=vision if pruner.needs_vision else None,
    )
    sel = pruner.select(ctx)
    plan.accept(st, sel)
    timer.stop()
