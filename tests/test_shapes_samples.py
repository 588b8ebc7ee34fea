"""Shapes training samples: determinism, agreement with the written split, target tokenisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from altp.data.synthetic import write_synthetic_split
from altp.models.sam import GroundingEncoder, GroundingEncoderConfig
from altp.models.tokenizer import TINY_TOKENIZER_DIR, load_glamm_tokenizer, parse_gcg_output
from altp.train.samples import _lowres_masks, collate, encode_target, render_sample


@pytest.fixture(scope="module")
def tok_ids():
    return load_glamm_tokenizer(TINY_TOKENIZER_DIR)


def test_render_is_a_function_of_seed_split_index():
    a = render_sample(seed=3, index=5)
    b = render_sample(seed=3, index=5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks) and a.target == b.target
    c = render_sample(seed=3, index=6)
    d = render_sample(seed=4, index=5)
    e = render_sample(seed=3, index=5, split="val")
    for other in (c, d, e):
        assert other.image.shape != a.image.shape or not np.array_equal(other.image, a.image)


def test_render_matches_the_written_split(tmp_path):
    """In-memory val sample i == image i of write_synthetic_split (pixels after JPEG, caption, labels, masks)."""
    gt_dir = write_synthetic_split(tmp_path, split="val", n_images=2, seed=7, image_size_range=(336, 336),
                                   objects_range=(2, 6))
    cap = json.loads((gt_dir / "val_gcg_coco_caption_gt.json").read_text())
    gt = json.loads((gt_dir / "val_gcg_coco_mask_gt.json").read_text())
    for i, ann in enumerate(cap["annotations"]):
        s = render_sample(seed=7, index=i, split="val")
        image = np.asarray(Image.open(tmp_path / "images" / f"{ann['image_id']}.jpg").convert("RGB"))
        assert np.array_equal(s.image, image)
        assert s.caption == ann["caption"] and s.labels == ann["labels"]
        masks = [mask_utils.decode(m["segmentation"]).astype(bool) for m in gt["annotations"]
                 if m["image_id"] == ann["image_id"]]
        assert len(masks) == len(s.masks) >= 2
        assert all(np.array_equal(a, b) for a, b in zip(masks, s.masks, strict=True))


def test_target_ids_decode_to_caption_and_labels(tok_ids):
    """The answer the model is taught parses (with GLaMM's own parser) back to the GT caption and labels."""
    tok, ids = tok_ids
    for i in range(15):
        s = render_sample(seed=0, index=i, split="val")
        t = encode_target(s.target, tok, ids)
        assert t[-1] == ids.eos and t.count(ids.seg) == len(s.labels)
        caption, phrases = parse_gcg_output(tok.decode(t[:-1], skip_special_tokens=False))
        assert caption == s.caption
        assert phrases == s.labels


def test_unknown_word_is_refused(tok_ids):
    tok, ids = tok_ids
    with pytest.raises(ValueError, match="outside the tokenizer"):
        encode_target("A <p> a red zeppelin </p> [SEG].", tok, ids)


def test_lowres_masks_hand_computed():
    """A 2x4 image, SAM input 8: resize to (4, 8) by area, pad to 8x8, 4x4 average -> 2x2."""
    m = np.zeros((1, 2, 4), dtype=bool)
    m[0, :, :2] = True  # left half
    low = _lowres_masks(m, input_hw=(4, 8), size=8)
    assert low.shape == (1, 2, 2)
    # top-left 4x4 block is fully inside the left half; top-right is empty; bottom is padding.
    assert torch.allclose(low[0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))


def test_collate_pads_targets_and_marks_padding(tok_ids):
    tok, ids = tok_ids
    sam = GroundingEncoder(config=GroundingEncoderConfig(image_size=64, hidden_size=16, num_layers=1, num_heads=1,
                                                         global_attn_indexes=(0,), window_size=2, prompt_dim=16,
                                                         decoder_mlp_dim=16, decoder_heads=1, mask_in_chans=4))
    samples = [render_sample(seed=0, index=i) for i in range(3)]
    b = collate(samples, tok=tok, ids=ids, sam=sam)
    lens = [len(encode_target(s.target, tok, ids)) for s in samples]
    assert b.target_ids.shape == (3, max(lens))
    assert b.target_valid.sum(1).tolist() == lens
    assert b.clip_pixels.shape == (3, 3, 336, 336) and b.sam_pixels.shape == (3, 3, 64, 64)
    assert [g.shape for g in b.gt_masks] == [(len(s.masks), 16, 16) for s in samples]
