"""OMG-LLaVA's perception prior: assign OMG-Seg's panoptic queries to the 16 x 16 cells.

Port of ``OMGSegVisualEncoder.panoptic_postprocess`` together with the resize
that ``Mask2FormerVideoSemSamHead.predict`` applies first
(``omg_llava/model/omg_seg/omg_seg_visual_encoder.py`` and
``mask2former_vid_semanticsam.py``). For one image:

1. mask logits ``(Q, h_m, w_m)`` (last decoder layer, mask-feature resolution,
   256 x 256 for a 1024 input) are resized bilinearly (``align_corners=False``)
   to the network input size (1024 x 1024);
2. foreground score ``s_q = max_k softmax(cls_q)[k]`` over the real classes
   (the last column, background, is dropped after the softmax);
3. ``P_q = (0.5 + 0.5 * s_q) * sigmoid(mask_q)`` (upstream ``smooth_ratio = 0.5``),
   resized bilinearly to the token grid (16 x 16, no antialiasing);
4. prior of cell ``p``: ``sum_q softmax_q(P[:, p]) * query_q`` where
   ``query_q = cat(decoder_output_q, query_embed_q)`` (512 channels);
5. ``attn_mask[q, p] = argmax_q' P[q', p] != q``: a query is *valid* (becomes
   an object token) iff it wins at least one cell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["perception_prior"]

SMOOTH_RATIO = 0.5  # upstream panoptic_postprocess: "use 0.5 as the smooth score"


def perception_prior(
    mask_cls: Tensor,
    mask_pred: Tensor,
    queries: Tensor,
    *,
    image_size: tuple[int, int],
    grid: tuple[int, int] = (16, 16),
) -> tuple[Tensor, Tensor]:
    """Per-cell query mixture and the query-to-cell assignment mask.

    Args:
        mask_cls: ``(B, Q, K + 1)`` class logits, background last.
        mask_pred: ``(B, Q, h_m, w_m)`` mask logits at mask-feature resolution.
        queries: ``(B, Q, 2c)`` final decoder queries concatenated with their
            positional embeddings.
        image_size: ``(H, W)`` of the network input (upstream resizes the
            masks to it before the grid resize, and the two resizes do not commute).
        grid: ``(h, w)`` token grid.

    Returns:
        ``prior (B, h * w, 2c)`` row-major over the grid, and
        ``attn_mask (B, Q, h * w)`` bool, True where the query does not win the cell.
    """
    if mask_cls.ndim != 3 or mask_pred.ndim != 4 or queries.ndim != 3:
        raise ValueError(
            "expected mask_cls (B, Q, K+1), mask_pred (B, Q, h, w), queries (B, Q, 2c); got "
            f"{tuple(mask_cls.shape)}, {tuple(mask_pred.shape)}, {tuple(queries.shape)}"
        )
    B, Q = mask_cls.shape[:2]
    if mask_pred.shape[:2] != (B, Q) or queries.shape[:2] != (B, Q):
        raise ValueError("mask_cls, mask_pred and queries must agree on (B, Q)")
    masks = F.interpolate(mask_pred, size=image_size, mode="bilinear", align_corners=False)
    scores = F.softmax(mask_cls, dim=-1)[..., :-1].max(-1).values  # (B, Q)
    prob = (scores * (1 - SMOOTH_RATIO) + SMOOTH_RATIO)[..., None, None] * masks.sigmoid()
    prob = F.interpolate(prob, size=grid, mode="bilinear", align_corners=False)  # (B, Q, h, w)
    prob = prob.flatten(2)  # (B, Q, hw)
    winners = prob.argmax(1)  # (B, hw)
    prior = prob.softmax(1).transpose(1, 2) @ queries  # (B, hw, 2c)
    attn_mask = winners[:, None, :] != torch.arange(Q, device=prob.device)[None, :, None]
    return prior, attn_mask
