"""OMG-LLaVA's image preprocessing and GCG mask post-processing.

From ``omg_llava/tools/gcg_omg_seg_llava.py`` (``GCD_Inference_Dataset`` and the
mask block of ``main``), xtuner ``dataset/utils.py`` (``expand2square``) and the
``image_processor`` of ``configs/finetune/omg_llava_7b_finetune_8gpus.py``:

* pad to a square with the mean colour ``tuple(int(m * 255) for m in MEAN)`` =
  ``(122, 116, 104)``, the original pasted at offset ``(side - size) // 2``;
* ``CLIPImageProcessor(size=1024, crop_size=1024, resample=3)``: on a square
  image that is a bicubic (PIL) resize to 1024 x 1024 (the centre crop is a
  no-op), then ``/ 255`` and normalisation with the *truncated* CLIP
  statistics below (upstream writes 0.4814, not 0.48145466);
* masks: logits ``(N, 1, h, w)`` -> bilinear resize to ``(S, S)``,
  ``S = max(W, H)`` -> crop the padding (``pad // 2`` before) -> ``sigmoid > 0.5``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from altp.models.pixels import OMG_IMAGE_SIZE, OMG_PAD_COLOUR, expand_to_square, omg_square_pixels

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_SIZE",
    "IMAGE_STD",
    "PAD_COLOUR",
    "expand_to_square",
    "image_to_tensor",
    "masks_to_original",
    "seg_hidden_states",
]

IMAGE_SIZE = OMG_IMAGE_SIZE
IMAGE_MEAN = (0.4814, 0.4578, 0.4082)
IMAGE_STD = (0.2686, 0.2613, 0.2757)
PAD_COLOUR = OMG_PAD_COLOUR  # tuple(int(m * 255) for m in IMAGE_MEAN), as upstream truncates


def image_to_tensor(image: Image.Image, *, size: int = IMAGE_SIZE) -> Tensor:
    """RGB image -> normalised ``(3, size, size)`` float32, as the GCG tool feeds OMG-Seg."""
    x = torch.from_numpy(omg_square_pixels(image, size).astype(np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    return (x - mean) / std


def masks_to_original(mask_logits: Tensor, *, original_size: tuple[int, int]) -> Tensor:
    """Decoder mask logits -> boolean masks on the original image.

    Args:
        mask_logits: ``(N, 1, h, w)`` (the LLM decoder's last layer, 256 x 256).
        original_size: ``(W, H)`` of the image before padding (PIL order, as upstream).

    Returns:
        ``(N, H, W)`` bool.
    """
    if mask_logits.ndim != 4 or mask_logits.shape[1] != 1:
        raise ValueError(f"mask_logits must be (N, 1, h, w), got {tuple(mask_logits.shape)}")
    w, h = original_size
    side = max(w, h)
    masks = F.interpolate(
        mask_logits.float(), size=(side, side), mode="bilinear", align_corners=False
    )[:, 0]
    if w > h:
        top = (w - h) // 2
        masks = masks[:, top : top + h]
    elif h > w:
        left = (h - w) // 2
        masks = masks[:, :, left : left + w]
    return masks.sigmoid() > 0.5


def seg_hidden_states(hidden: Tensor, generated_ids: Tensor, *, seg_token_id: int) -> Tensor:
    """Hidden states that upstream turns into masks: those *of* the ``[SEG]`` tokens.

    Unlike GLaMM (state of the token before ``[SEG]``), OMG-LLaVA's
    ``get_seg_hidden_states`` takes the final-layer state at the position where
    ``[SEG]`` is the *input*. Upstream pairs the last ``G - 1`` states with
    ``generated_ids[:-1]``, so a ``[SEG]`` emitted as the very last token (never
    fed back) yields no mask.

    Args:
        hidden: ``(T, C)`` final-layer states of the whole sequence in order
            (prompt positions then each fed-back generated token), ``T >= G - 1``.
        generated_ids: ``(G,)`` generated token ids (no prompt).
    Returns:
        ``(N_seg, C)``.
    """
    fed_back = generated_ids[:-1]
    if fed_back.numel() == 0:
        return hidden[:0]
    if hidden.shape[0] < fed_back.numel():
        raise ValueError(
            f"{hidden.shape[0]} hidden states cannot cover {fed_back.numel()} fed-back tokens"
        )
    return hidden[-fed_back.numel() :][fed_back == seg_token_id]
