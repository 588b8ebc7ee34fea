"""DART (Wen et al., 2025, "Stop Looking for Important Tokens ... Duplication Matters More"): keep the
visual tokens least similar to a few pivot tokens, at decoder layer K.

Mirrors upstream ``ZichenWen1/DART`` (``llava/model/language_model/modeling_llama_self.py``,
``get_retained_image_token``; the same rule as llmc's ``token_reduction/dart.py``):
before layer K (default 2), with layer K-1's outputs,

1. pivots: the ``pivot_image`` (4) visual tokens with the largest L1 norm of layer
   K-1's post-RoPE attention keys, and the ``pivot_text`` (4) tokens after the visual
   span (the rest of the prompt) with the largest such norm;
2. similarity: layer K-1's output hidden states through the model's final norm,
   cosine similarity;
3. each pivot in turn (the iteration order of upstream's Python ``set`` of the
   pivots' sequence positions) takes, from the visual tokens not yet taken (image
   pivots excluded), the ones with the LOWEST cosine similarity to it;
4. kept: the image pivots and every token taken, in original order; text pivots only
   act as queries. Kept tokens keep their original positions (gaps), as upstream
   sets ``position_ids = keep_indexs``; generated tokens continue the unpruned
   numbering.

Where this follows upstream and where it deviates:

* Follows: K=2, 4 + 4 pivots, L1 key norms (upstream flattens the repeated keys of
  every head; with grouped-query attention each kv head repeats equally, so the
  ranking is the same), final-norm'ed hidden states, per-pivot disjoint picks in
  upstream's set order, original positions.
* Count: upstream takes ``TOPK = ceil(M // P)`` tokens per pivot (M = 128, P = 8)
  and so keeps ``4 + 8 * 16 = 132`` for its "128" setting; here the total is exactly
  ``floor(keep * V)``: ``n = floor(keep * V) - 4`` picks shared by the 8 pivots,
  ``n // 8`` each and one more for the first ``n % 8`` in upstream's order (with
  fewer than 4 tokens kept, that many image pivots and no picks).
* Image span: upstream hard-codes it (35, 576); here it is the span the model
  adapter reports; "after the image" is the rest of the prompt.
* Batch: upstream asserts batch 1; here each element by its own states.
* Precision: upstream computes in fp16; here the norms and cosines in float32.

``added_flops`` (recorded per image, counted in every FLOPs convention): the cosine
similarities, ``2 D`` per pivot and candidate (``2 D sum_p |pool_p|``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from altp.pruning.base import (
    PruneContext,
    Pruner,
    PruneStage,
    ScheduleInfo,
    Selection,
    register_pruner,
)

__all__ = ["DARTPruner", "dart_select"]


def dart_select(
    *, keys: torch.Tensor, hidden: torch.Tensor, start: int, num_visual: int, n_keep: int,
    pivot_image: int = 4, pivot_text: int = 4,
) -> tuple[list[int], float]:  # fmt: skip
    """One sample's kept visual tokens (relative indices, sorted) and the similarity FLOPs.

    Args:
        keys: (L, C) layer K-1's post-RoPE keys of every token (heads flattened).
        hidden: (L, D) layer K-1's outputs through the final norm.
        start: first visual token in the sequence; ``num_visual`` of them follow.
        n_keep: visual tokens to keep.
        pivot_image, pivot_text: pivot counts (upstream 4 and 4).
    """
    end = start + num_visual
    norms = keys.float().abs().sum(-1)  # (L,) L1 norm of each token's keys
    n_img = min(pivot_image, n_keep)
    img_piv = (norms[start:end].topk(n_img).indices + start).tolist()
    n_txt = min(pivot_text, keys.shape[0] - end)
    txt_piv = (norms[end:].topk(n_txt).indices + end).tolist() if n_txt > 0 else []
    pivots = list(set(img_piv + txt_piv))  # upstream's iteration order
    picks = n_keep - n_img
    share, extra = divmod(picks, len(pivots)) if pivots else (0, 0)
    h = hidden.float()
    chosen = set(img_piv)
    pool = sorted(set(range(start, end)) - set(img_piv))
    flops = 0.0
    for i, p in enumerate(pivots):
        take = share + (1 if i < extra else 0)
        if take == 0 or not pool:
            continue
        flops += 2.0 * len(pool) * h.shape[1]
        sim = -F.cosine_similarity(h[p][None], h[pool], dim=-1)  # (|pool|,) higher = less similar
        picked = {pool[j] for j in sim.topk(take).indices.tolist()}
        chosen |= picked
        pool = [j for j in pool if j not in picked]
    return sorted(j - start for j in chosen), flops


@register_pruner("dart")
class DARTPruner(Pruner):
    """Keep image pivots and the visual tokens least similar to 4 image + 4 text pivots, at layer K.

    Args:
        keep: fraction of visual tokens kept, in (0, 1].
        layer: K (upstream default 2): the input of layer K is pruned, with layer
            K-1's keys and outputs.
        pivot_image, pivot_text: pivot counts (upstream 4 and 4).
    """

    needs_scores: ClassVar[bool] = False

    def __init__(self, *, keep: float, layer: int = 2, pivot_image: int = 4, pivot_text: int = 4) -> None:
        super().__init__(keep=keep, layer=layer)
        if pivot_image < 1 or pivot_text < 0:
            raise ValueError(f"dart needs pivot_image >= 1 and pivot_text >= 0, got {pivot_image}, {pivot_text}")
        self.pivot_image, self.pivot_text = int(pivot_image), int(pivot_text)

    def schedule(self, info: ScheduleInfo) -> list[PruneStage]:
        (stage,) = super().schedule(info)
        # Layer K-1's keys (post-RoPE, from the KV cache at prefill) and outputs through the final norm.
        return [PruneStage(layer=stage.layer, n_keep=stage.n_keep, score_layer=stage.layer - 1,
                           signals=("keys", "hidden_normed"))]  # fmt: skip

    def select(self, ctx: PruneContext) -> Selection:
        if ctx.keys is None or ctx.hidden_normed is None:
            raise ValueError("dart needs ctx.keys and ctx.hidden_normed (its stage asks the engine for them)")
        rows, extras = [], []
        for b in range(ctx.batch_size):
            kept, flops = dart_select(
                keys=ctx.keys[b], hidden=ctx.hidden_normed[b], start=ctx.visual_start, num_visual=ctx.num_current,
                n_keep=ctx.n_keep, pivot_image=self.pivot_image, pivot_text=self.pivot_text,
            )  # fmt: skip
            rows.append(kept)
            extras.append({"added_flops": flops})
        return Selection(indices=torch.tensor(rows, dtype=torch.long, device=ctx.visual_ids.device),
                         extras=tuple(extras))  # fmt: skip

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "pivot_image": self.pivot_image, "pivot_text": self.pivot_text}
