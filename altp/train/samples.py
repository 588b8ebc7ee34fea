"""Training samples for the shapes model, rendered in memory and batched.

A sample is drawn by :mod:`altp.data.synthetic`'s scene renderer from
``np.random.default_rng([seed, crc32(split), index])`` -- the same stream
``write_synthetic_split`` uses for its files -- so the training split "train"
can never repeat a val or test image (different split key), and a sample is a
pure function of ``(seed, split, index)``. The image goes through the same JPEG
round trip (quality 90, 4:2:0) as the files the evaluation reads, so the model
never meets a compression it was not trained on.

Targets follow GLaMM's training format ``... <p> label </p> [SEG] ...``
(:func:`altp.data.synthetic.gcg_target_text`). Tokenisation (:func:`encode_target`)
mimics a sentencepiece tokenizer under upstream's slow-tokenizer splitting: the
text between added tokens is stripped and encoded as its own piece *with a
leading space* (sentencepiece's dummy prefix), so decoding the ids and running
:func:`altp.models.tokenizer.parse_gcg_output` gives back the caption and labels.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import PreTrainedTokenizerBase

from altp.data import synthetic
from altp.models.glamm import CLIP_MEAN, CLIP_STD, clip_resize_crop
from altp.models.sam import GroundingEncoder
from altp.models.tokenizer import GLAMM_ADDED_TOKENS, GLaMMTokenIds

__all__ = ["COLOUR_CLASSES", "RANK_CLASSES", "SHAPE_CLASSES", "SIZE_CLASSES", "TrainBatch", "TrainSample", "collate",
           "encode_target", "patch_labels", "render_sample"]

_ADDED = re.compile("(" + "|".join(re.escape(t) for t in GLAMM_ADDED_TOKENS) + ")")


@dataclass(frozen=True)
class TrainSample:
    """One rendered scene.

    Attributes:
        image: (H, W, 3) uint8 RGB, after the JPEG round trip.
        caption: the ground-truth caption (as in the caption GT file).
        labels: one phrase per object, in caption order.
        masks: (N, H, W) bool, the i-th mask pairs with the i-th label / ``[SEG]``.
        target: GLaMM's answer text ``... <p> label </p> [SEG] ...``.
        patch_labels: (4, 24, 24) int64 class of each CLIP patch for the training-only
            probe (:func:`patch_labels`): rows colour, shape, size, caption place; 0 = background.
    """

    image: np.ndarray
    caption: str
    labels: list[str]
    masks: np.ndarray
    target: str
    patch_labels: np.ndarray


def render_sample(
    *, seed: int, index: int, split: str = "train", image_size: tuple[int, int] = (336, 336),
    objects: tuple[int, int] = (2, 6),
) -> TrainSample:
    """Render sample ``index`` of ``split`` exactly as ``write_synthetic_split`` would.

    Args:
        seed, split, index: the generator stream (see the module docstring).
        image_size: inclusive (min, max) side length, drawn per side.
        objects: inclusive (min, max) objects per image.
    """
    rng = np.random.default_rng([seed, synthetic._split_key(split), index])
    synthetic._image_id(rng, split, set())  # consume the id draw so scenes match the written files
    # The renderer is private to altp.data.synthetic; we call it (rather than read
    # JPEGs back) to render training data on the fly without touching the disk.
    scene = synthetic._render_scene(rng, size_range=image_size, objects_range=objects)
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="JPEG", quality=synthetic.JPEG_QUALITY, subsampling=2)
    image = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    masks = np.stack(scene.masks).astype(bool)
    return TrainSample(
        image=image, caption=scene.caption, labels=list(scene.labels), masks=masks,
        target=synthetic.gcg_target_text(scene.caption, scene.labels),
        patch_labels=patch_labels(masks, scene.labels),
    )


COLOUR_CLASSES = ("background", *synthetic._COLOURS)
SHAPE_CLASSES = ("background", *synthetic._SHAPES)
SIZE_CLASSES = ("background", "small", "medium", "large")
RANK_CLASSES = ("background", *(str(k) for k in range(1, 9)))  # place in the caption, 8+ share the last


def _attributes(label: str) -> tuple[int, int, int]:
    """(colour, shape, size) class ids of a label like ``"a small red circle"``."""
    words = label.split()[1:]  # drop the article
    size = words[0] if words[0] in ("small", "large") else "medium"
    return COLOUR_CLASSES.index(words[-2]), SHAPE_CLASSES.index(words[-1]), SIZE_CLASSES.index(size)


def patch_labels(masks: np.ndarray, labels: list[str], grid: int = 24, min_cover: float = 0.25) -> np.ndarray:
    """Per CLIP patch, the attributes of the object covering most of it: (4, grid, grid) int64.

    Rows: colour, shape, size, and the object's place in the caption (1 = first
    mentioned; ``masks`` are in caption order). Targets of the training-only patch
    probe (``altp.train.losses``): they make the vision tower's tokens say early
    which object sits where and when it is due, instead of waiting for the LM loss
    alone to shape them. Square images only (CLIP's resize
    + centre crop is then a plain resize). A patch less than ``min_cover`` covered
    by any object is background (class 0 in each row).
    """
    n, h, w = masks.shape
    if h != w:
        raise ValueError(f"patch labels need square training images, got {h}x{w}")
    cover = F.interpolate(torch.from_numpy(masks).float()[None], (grid, grid), mode="area")[0]  # (N, g, g)
    best, idx = cover.max(0)
    rank = [min(k + 1, len(RANK_CLASSES) - 1) for k in range(n)]
    attrs = torch.tensor([(*_attributes(lab), r) for lab, r in zip(labels, rank, strict=True)],
                         dtype=torch.long).T  # (4, N)
    out = attrs[:, idx]  # (4, g, g)
    out[:, best < min_cover] = 0
    return out.numpy()


def encode_target(text: str, tok: PreTrainedTokenizerBase, ids: GLaMMTokenIds) -> list[int]:
    """Answer ids (no BOS, ending with EOS) for a target like ``"A <p> x </p> [SEG] y."``.

    Raises:
        ValueError: a word is not in the vocabulary (it would become ``<unk>``).
    """
    out: list[int] = []
    for i, part in enumerate(_ADDED.split(text)):
        if i % 2:
            out.append(int(tok.convert_tokens_to_ids(part)))  # pyright: ignore[reportArgumentType]  (transformers types token ids as int | list | str)
        elif part.strip():
            piece = tok(" " + part.strip(), add_special_tokens=False)["input_ids"]
            if tok.unk_token_id in piece:
                raise ValueError(f"target piece {part.strip()!r} has words outside the tokenizer; rebuild it "
                                 "with the missing words (scripts/build_tiny_tokenizer.py)")
            out.extend(piece)
    return [*out, ids.eos]


@dataclass
class TrainBatch:
    """A padded batch.

    Attributes:
        clip_pixels: (B, 3, 336, 336) normalised CLIP input.
        sam_pixels: (B, 3, S, S) normalised, padded SAM input.
        target_ids: (B, T) answer ids, right-padded with EOS.
        target_valid: (B, T) bool, False on padding (no loss there).
        gt_masks: per sample (N_i, S/4, S/4) float in [0, 1]: the GT masks
            resized to SAM's input, zero-padded, area-averaged to the low-res grid.
        patch_labels: (B, 4, 576) int64 targets of the training-only patch probe.
    """

    clip_pixels: torch.Tensor
    sam_pixels: torch.Tensor
    target_ids: torch.Tensor
    target_valid: torch.Tensor
    gt_masks: list[torch.Tensor]
    patch_labels: torch.Tensor


def _lowres_masks(masks: np.ndarray, *, input_hw: tuple[int, int], size: int) -> torch.Tensor:
    """(N, H, W) bool -> (N, size/4, size/4) float: resize, pad like SAM's input, average-pool by 4."""
    m = torch.from_numpy(masks).float().unsqueeze(1)  # (N, 1, H, W)
    m = F.interpolate(m, input_hw, mode="area")
    m = F.pad(m, (0, size - input_hw[1], 0, size - input_hw[0]))
    return F.avg_pool2d(m, 4)[:, 0]


def collate(
    samples: list[TrainSample], *, tok: PreTrainedTokenizerBase, ids: GLaMMTokenIds, sam: GroundingEncoder,
    clip_size: int = 336,
) -> TrainBatch:
    """Tensors for one training step (CPU, float32)."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    clip, sam_px, gts, targets = [], [], [], []
    for s in samples:
        pil = Image.fromarray(s.image)
        x = torch.from_numpy(clip_resize_crop(pil, clip_size)).permute(2, 0, 1).float()
        clip.append((x / 255.0 - mean) / std)
        px, input_hw = sam.preprocess(pil)
        sam_px.append(px[0])
        gts.append(_lowres_masks(s.masks, input_hw=input_hw, size=sam.config.image_size))
        targets.append(encode_target(s.target, tok, ids))
        n_seg = targets[-1].count(ids.seg)
        if n_seg != len(s.masks):
            raise ValueError(f"target has {n_seg} [SEG] tokens but the sample has {len(s.masks)} masks")
    t_max = max(len(t) for t in targets)
    target_ids = torch.full((len(samples), t_max), ids.eos, dtype=torch.long)
    valid = torch.zeros((len(samples), t_max), dtype=torch.bool)
    for b, t in enumerate(targets):
        target_ids[b, : len(t)] = torch.tensor(t)
        valid[b, : len(t)] = True
    patches = torch.stack([torch.from_numpy(s.patch_labels).flatten(1) for s in samples])
    return TrainBatch(clip_pixels=torch.stack(clip), sam_pixels=torch.stack(sam_px), target_ids=target_ids,
                      target_valid=valid, gt_masks=gts, patch_labels=patches)
