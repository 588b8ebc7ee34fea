"""VisionZip (Yang et al., CVPR 2025): dominant tokens by CLS attention, the rest merged into a few contextual tokens.

Mirrors upstream ``dvlab-research/VisionZip`` (``visionzip/clip_encoder.py``,
``visionzip/utils.py``, ``visionzip/main.py``), at the vision tower's feature layer
(the layer whose outputs the LLM receives, CLIP's penultimate):

1. dominant: the patches with the largest CLS attention (the CLS query's row, softmax
   per head over every token, summed over heads, CLS column left out), kept in their
   original order;
2. contextual: the other R patches, in original order; ``C`` targets evenly spaced
   among them (``step = max(1, R // C)``, positions ``0, step, 2 step, ...``, the first
   C); every other patch goes to the target whose attention key (``k_proj(layer_norm1(x))``
   averaged over heads, L2-normalised) is most similar (dot product; ties to the first
   target); a contextual token is its target's feature **plus the mean** of the features
   assigned to it (upstream's sum, not a mean over target and members), on the
   feature layer's outputs, before the projector;
3. the LLM receives the dominant tokens' embeddings then the C contextual tokens'
   (through the model's projector), pruned before decoder layer 0, positions
   contiguous (upstream feeds the shorter sequence to LLaVA).

Where this follows upstream and where it deviates:

* Follows: the attention layer and head sum, the target spacing, key similarity and
  assignment, target + mean merging before the projector, the output order, contiguous
  positions.
* CLS: upstream keeps the CLS token as one of its "dominant" tokens and passes it to
  the LLM (LLaVA-1.5's encoder returns it there). GLaMM feeds the LLM patch tokens only
  (it was trained so), so here the dominant tokens are patches only, CLS is neither
  kept nor merged, and every one of the ``floor(keep * V)`` tokens is a patch token or a
  contextual token.
* Counts: upstream is configured with two numbers (README default 54 dominant + 10
  contextual = 64); for a budget ``n = floor(keep * V)`` here ``C = round(n *
  contextual_share)`` (half up, at least 1 when n >= 2) with ``contextual_share =
  10 / 64``, upstream's default ratio, and the rest dominant: 48 + 9 at keep 0.1 of
  576, 121 + 23 at 0.25, 243 + 45 at 0.5.
* Precision: the attention row is computed in float32 from the layer's own q/k (CLIP
  keeps its SDPA kernel); upstream reads fp16 eager attention weights.
* Batch: each element by its own attention (upstream's batched code does the same).

Needs the vision tower's CLS attention, features and keys (``needs_vision``): GLaMM's
CLIP ViT has them; OMG-LLaVA's ConvNeXt has no CLS token, so the run stops at config
time with one line.

``added_flops`` (recorded per image, counted in every FLOPs convention): the key
similarities ``2 (R - C) C h`` (h: key width), the merge ``2 (R - C) C c`` (upstream's
one-hot matrix product; c: feature width) and projecting the C contextual tokens
``2 C (c D + D^2)`` (the projector's two linear layers). The CLS row is part of the
attention CLIP computes anyway.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from altp.pruning.base import PruneContext, Pruner, Selection, register_pruner

__all__ = ["VisionZipPruner", "merge_contextual", "split_budget"]


def split_budget(n_keep: int, contextual_share: float, num_visual: int | None = None) -> tuple[int, int]:
    """(dominant, contextual) tokens for a budget of ``n_keep`` of ``num_visual`` (see the module docstring).

    Keeping every token (``n_keep == num_visual``) merges nothing: all are dominant.
    """
    if n_keep < 2 or (num_visual is not None and n_keep >= num_visual):
        return n_keep, 0
    contextual = min(max(1, math.floor(n_keep * contextual_share + 0.5)), n_keep - 1)
    return n_keep - contextual, contextual


def merge_contextual(
    features: torch.Tensor, keys: torch.Tensor, contextual: int
) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """Upstream's contextual tokens from one sample's remaining (non-dominant) tokens.

    Args:
        features: (R, c) the remaining tokens' features, in original order.
        keys: (R, h) their attention keys (averaged over heads).
        contextual: C, the contextual tokens to make (1 <= C <= R).

    Returns:
        (C, c) contextual features, and per contextual token the positions (into the R
        remaining tokens) it absorbed, its target first, then its members in order.
    """
    r = features.shape[0]
    step = max(1, r // contextual)
    targets = torch.arange(0, r, step, device=features.device)[:contextual]
    is_target = torch.zeros(r, dtype=torch.bool, device=features.device)
    is_target[targets] = True
    others = (~is_target).nonzero()[:, 0]  # original order
    unit = keys.float() / keys.float().norm(dim=-1, keepdim=True)
    sim = unit[others] @ unit[targets].T  # (R - C, C)
    assign = sim.argmax(dim=1)  # (R - C,) first target on ties
    one_hot = torch.nn.functional.one_hot(assign, contextual).to(features.dtype)  # (R - C, C)
    counts = one_hot.sum(0).clamp(min=1)[:, None]  # (C, 1)
    merged = features[targets] + (one_hot.T @ features[others]) / counts
    groups = [(int(t),) + tuple(int(j) for j in others[assign == k].tolist()) for k, t in enumerate(targets.tolist())]
    return merged, groups


@register_pruner("visionzip")
class VisionZipPruner(Pruner):
    """Keep the CLS attention's dominant patches and merge the rest into contextual tokens, before layer 0.

    Args:
        keep: fraction of visual tokens kept (dominant + contextual), in (0, 1].
        layer: 0 (the LLM input: upstream prunes inside the vision tower, before the
            projector); other layers are not supported.
        contextual_share: the contextual tokens' share of the budget (upstream's 10 of 64).
    """

    needs_scores: ClassVar[bool] = False
    min_layer: ClassVar[int] = 0

    def __init__(self, *, keep: float, layer: int = 0, contextual_share: float = 10 / 64) -> None:
        super().__init__(keep=keep, layer=layer)
        if layer != 0:
            raise ValueError(f"visionzip prunes at the LLM input (layer 0), got layer={layer}")
        if not 0.0 <= contextual_share < 1.0:
            raise ValueError(f"visionzip contextual_share must be in [0, 1), got {contextual_share}")
        self.contextual_share = float(contextual_share)

    @property
    def needs_vision(self) -> frozenset[str]:
        return frozenset({"cls_attention", "features", "keys"})

    def vision_hint(self) -> str:
        return "; VisionZip ranks by a ViT's CLS attention: use a model with one (glamm), or divprune / dart"

    def select(self, ctx: PruneContext) -> Selection:
        vis = ctx.vision
        if vis is None or vis.cls_attention is None or vis.features is None or vis.keys is None or vis.project is None:
            raise ValueError("visionzip needs the vision tower's CLS attention, features, keys and projector "
                             "(ctx.vision); this model does not provide them")  # fmt: skip
        if ctx.num_current != ctx.num_visual:
            raise ValueError("visionzip must be the first stage: it reads the vision tower's full token set")
        n_dom, n_ctx = split_budget(ctx.n_keep, self.contextual_share, ctx.num_visual)
        dominant = vis.cls_attention.float().topk(n_dom, dim=1).indices.sort(dim=1).values  # (B, n_dom)
        extras: list[dict[str, Any]] = []
        if n_ctx == 0:
            return Selection(indices=dominant, extras=tuple({"added_flops": 0.0} for _ in range(ctx.batch_size)))
        merged, groups = [], []
        for b in range(ctx.batch_size):
            rest = torch.ones(ctx.num_visual, dtype=torch.bool, device=dominant.device)
            rest[dominant[b]] = False
            rest_ids = rest.nonzero()[:, 0]  # (R,) original order
            feats, groups_b = merge_contextual(vis.features[b][rest_ids], vis.keys[b][rest_ids], n_ctx)
            merged.append(feats)
            groups.append(tuple(tuple(int(rest_ids[j]) for j in g) for g in groups_b))
            r, c, h = rest_ids.numel(), feats.shape[1], vis.keys.shape[-1]
            d = ctx.hidden.shape[-1] if ctx.hidden is not None else 0
            extras.append({"added_flops": 2.0 * (r - n_ctx) * n_ctx * (h + c) + 2.0 * n_ctx * (c * d + d * d)})
        embeds = vis.project(torch.stack(merged))  # (B, C, D) LLM input embeddings
        return Selection(indices=dominant, extras=tuple(extras), merged=embeds, merged_from=tuple(groups))

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "contextual_share": self.contextual_share}
