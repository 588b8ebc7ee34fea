"""GLaMM's training objective, teacher-forced, on the same code path as inference.

Sequence layout of one training row (as :meth:`GLaMM.build_inputs_embeds`,
then the answer)::

    [prompt prefix: k][V visual][prompt suffix][answer: T target tokens]
                                              ^ L0 = k + V + len(suffix)

The final-layer (post-norm) hidden state at position ``L0 - 1 + j`` is the one
whose logits predict answer token ``j``. For a ``[SEG]`` at answer position
``j`` that state belongs to the token *before* ``[SEG]`` -- exactly the state
:meth:`GLaMM.predict` takes from the engine's ``step_hidden`` at inference -- so
:func:`answer_states` serves both the LM loss and the mask queries.

Loss weights default to GLaMM's (``train.py``: ce 1.0, bce 2.0, dice 0.5).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from altp.models.glamm import GLaMM
from altp.train.samples import COLOUR_CLASSES, RANK_CLASSES, SHAPE_CLASSES, SIZE_CLASSES, TrainBatch

__all__ = ["PatchProbe", "answer_states", "dice_loss", "forward_losses", "seg_queries"]


class PatchProbe(torch.nn.Module):
    """Training-only linear probe: projected visual token -> its patch's colour, shape, size, caption place.

    Not part of GLaMM and not saved with it; its loss makes the tiny vision tower
    informative long before the LM loss alone would (TRAINING.md).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.sizes = (len(COLOUR_CLASSES), len(SHAPE_CLASSES), len(SIZE_CLASSES), len(RANK_CLASSES))
        self.head = torch.nn.Linear(dim, sum(self.sizes))

    def forward(self, visual: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean CE over the attributes and patch accuracy on colour. visual (B, V, D), labels (B, 4, V)."""
        logits = self.head(visual).float().split(self.sizes, dim=-1)
        labels = labels.to(visual.device)
        # a sum of (at least one) tensors is a tensor; sum() is typed for its int start too
        loss = cast(torch.Tensor, sum(F.cross_entropy(lg.flatten(0, 1), labels[:, i].flatten()) for i, lg in enumerate(logits)))
        loss = loss / len(self.sizes)
        with torch.no_grad():
            acc = (logits[0].argmax(-1) == labels[:, 0]).float().mean()
        return loss, acc


def answer_states(model: GLaMM, batch: TrainBatch, visual: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced final-layer states predicting each answer token: (B, T, D)."""
    bsz, t = batch.target_ids.shape
    if visual is None:
        visual = model.encode_image(batch.clip_pixels)  # (B, V, D)
    emb = model.llm.get_input_embeddings()
    k = len(model.prefix_ids)
    prompt = emb(torch.tensor(model.prefix_ids + model.suffix_ids, device=visual.device)).expand(bsz, -1, -1)
    answer = emb(batch.target_ids.to(visual.device))  # (B, T, D)
    x = torch.cat([prompt[:, :k], visual, prompt[:, k:], answer], dim=1)  # (B, L0 + T, D)
    hidden = model.llm.model(inputs_embeds=x).last_hidden_state  # post-norm, like output_hidden_states[-1]
    l0 = x.shape[1] - t
    return hidden[:, l0 - 1 : l0 - 1 + t]


def seg_queries(states: torch.Tensor, target_ids: torch.Tensor, valid: torch.Tensor, seg_id: int) -> list[torch.Tensor]:
    """Per sample, the states (N_i, D) that predicted its ``[SEG]`` tokens, in answer order.

    Args:
        states: (B, T, D) from :func:`answer_states` (row j predicts answer token j).
        target_ids: (B, T) answer ids; valid: (B, T) bool.
    """
    hit = (target_ids == seg_id) & valid
    return [states[b][hit[b]] for b in range(states.shape[0])]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over masks of ``1 - (2 sum(p g) + eps) / (sum p + sum g + eps)``; (N, h, w) inputs."""
    p = logits.sigmoid().flatten(1)
    g = target.flatten(1)
    return (1 - (2 * (p * g).sum(1) + eps) / (p.sum(1) + g.sum(1) + eps)).mean()


def forward_losses(
    model: GLaMM, batch: TrainBatch, *, w_lm: float = 1.0, w_bce: float = 2.0, w_dice: float = 0.5,
    probe: PatchProbe | None = None, w_probe: float = 1.0,
) -> dict[str, torch.Tensor]:
    """LM cross-entropy on answer tokens plus BCE + dice on SAM's low-res mask logits.

    Returns:
        {"loss", "lm", "bce", "dice", "token_acc", "mask_iou"}; only "loss" carries
        gradients; "mask_iou" is the IoU of low-res logits > 0 vs GT > 0.5,
        averaged over masks; with a ``probe``, also "probe" (its loss, added with
        weight ``w_probe``) and "patch_acc" (colour accuracy per patch).
    """
    visual = model.encode_image(batch.clip_pixels)  # (B, V, D)
    states = answer_states(model, batch, visual)  # (B, T, D)
    valid = batch.target_valid.to(states.device)
    targets = batch.target_ids.to(states.device)
    logits = model.llm.lm_head(states[valid])  # (n_valid, vocab)
    lm = F.cross_entropy(logits.float(), targets[valid])
    sam = model.grounding_encoder
    embedding = sam.encode(batch.sam_pixels.to(states.device, states.dtype))  # (B, C, h, w)
    queries = seg_queries(states, targets, valid, model.token_ids.seg)
    bce_sum, dice_sum, n_masks = 0.0, 0.0, 0
    ious = []
    for b, q in enumerate(queries):
        if q.shape[0] == 0:
            continue
        low = sam.decode(embedding[b : b + 1], model.text_hidden_fcs(q)).float()  # (N_b, 4h, 4w)
        gt = batch.gt_masks[b].to(low.device)
        n = q.shape[0]
        bce_sum = bce_sum + F.binary_cross_entropy_with_logits(low, gt, reduction="none").flatten(1).mean(1).sum()
        dice_sum = dice_sum + dice_loss(low, gt) * n
        n_masks += n
        with torch.no_grad():
            pred, ref = low > 0, gt > 0.5
            inter = (pred & ref).flatten(1).sum(1).float()
            union = (pred | ref).flatten(1).sum(1).float().clamp(min=1)
            ious.append(inter / union)
    bce = bce_sum / max(n_masks, 1)
    dice = dice_sum / max(n_masks, 1)
    loss = w_lm * lm + w_bce * bce + w_dice * dice
    extra: dict[str, torch.Tensor] = {}
    if probe is not None:
        probe_loss, patch_acc = probe(visual, batch.patch_labels)
        loss = loss + w_probe * probe_loss
        extra = {"probe": probe_loss.detach(), "patch_acc": patch_acc}
    with torch.no_grad():
        acc = (logits.argmax(-1) == targets[valid]).float().mean()
        iou = torch.cat(ious).mean() if ious else torch.tensor(0.0)
    return {"loss": loss, "lm": lm.detach(), "bce": torch.as_tensor(bce).detach(),
            "dice": torch.as_tensor(dice).detach(), "token_acc": acc, "mask_iou": iou, **extra}
