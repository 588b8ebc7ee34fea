"""OMG-LLaVA parts: pixel shuffle, projectors, perception prior, pre/post-processing.

Oracles are index loops and hand-computed numbers, not the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from altp.models.omg.perception_prior import perception_prior
from altp.models.omg.preprocess import (
    IMAGE_MEAN,
    IMAGE_STD,
    PAD_COLOUR,
    expand_to_square,
    image_to_tensor,
    masks_to_original,
    seg_hidden_states,
)
from altp.models.omg.projector import OmgLlavaProjector, TextToVisionProjector, pixel_shuffle


def test_pixel_shuffle_index_map():
    x = torch.randn(2, 3, 4, 6)
    y = pixel_shuffle(x, ratio=2)
    assert y.shape == (2, 12, 2, 3)
    for b in range(2):
        for c in range(3):
            for yy in range(2):
                for xx in range(3):
                    for i in range(2):
                        for j in range(2):
                            assert (
                                y[b, (i * 2 + j) * 3 + c, yy, xx] == x[b, c, yy * 2 + i, xx * 2 + j]
                            )


def test_pixel_shuffle_gives_256_tokens_of_6144_for_convnext_l():
    feat = torch.zeros(1, 1536, 32, 32)
    tokens = pixel_shuffle(feat).flatten(2).transpose(1, 2)
    assert tokens.shape == (1, 256, 6144)
    with pytest.raises(ValueError, match="divisible"):
        pixel_shuffle(torch.zeros(1, 2, 3, 4))


def test_projector_parameter_names_and_shapes_match_upstream():
    with torch.device("meta"):
        proj = OmgLlavaProjector()
        t2v = TextToVisionProjector()
    assert {k: tuple(v.shape) for k, v in proj.state_dict().items()} == {
        "query_proj.weight": (6144, 512),
        "query_proj.bias": (6144,),
        "model.0.weight": (4096, 6144),
        "model.0.bias": (4096,),
        "model.2.weight": (4096, 4096),
        "model.2.bias": (4096,),
        "model_feat.0.weight": (4096, 6656),
        "model_feat.0.bias": (4096,),
        "model_feat.2.weight": (4096, 4096),
        "model_feat.2.bias": (4096,),
        "seperate_embed.weight": (1, 4096),
    }
    assert {k: tuple(v.shape) for k, v in t2v.state_dict().items()} == {
        "model.0.weight": (512, 4096),
        "model.0.bias": (512,),
        "model.2.weight": (512, 512),
        "model.2.bias": (512,),
    }


def _mlp(seq, x):
    h = x @ seq[0].weight.T + seq[0].bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    return h @ seq[2].weight.T + seq[2].bias


@torch.inference_mode()
def test_projector_keeps_only_queries_that_win_a_cell():
    torch.manual_seed(0)
    proj = OmgLlavaProjector(pixel_dims=8, query_dims=4, llm_dims=6)
    pix = torch.randn(2, 5, 12)
    queries = torch.randn(2, 3, 4)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[0, 2, 1] = False  # image 0: only query 2 wins a cell
    mask[1, 0, :] = False  # image 1: queries 0 and 1 win
    mask[1, 1, 3] = False
    out = proj(pix, queries, mask)
    torch.testing.assert_close(out.pixel_tokens, _mlp(proj.model_feat, pix))
    objects = _mlp(proj.model, queries @ proj.query_proj.weight.T + proj.query_proj.bias)
    torch.testing.assert_close(out.object_tokens[0], objects[0, [2]])
    torch.testing.assert_close(out.object_tokens[1], objects[1, [0, 1]])
    seq = out.sequence(1)
    assert seq.shape == (5 + 1 + 2, 6)
    torch.testing.assert_close(seq[5], proj.seperate_embed.weight[0])
    with pytest.raises(ValueError, match="channels"):
        proj(pix[..., :8], queries, mask)


@torch.inference_mode()
def test_perception_prior_hand_computed():
    # Two queries, one foreground class + background, 1x2 masks, no-op resizes.
    mask_cls = torch.tensor([[[math.log(3.0), 0.0], [0.0, math.log(3.0)]]])  # scores 0.75, 0.25
    mask_pred = torch.tensor([[[[0.0, 2.0]], [[0.0, -2.0]]]])  # (1, 2, 1, 2)
    queries = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    prior, attn = perception_prior(mask_cls, mask_pred, queries, image_size=(1, 2), grid=(1, 2))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    p = [[0.875 * 0.5, 0.875 * sig(2.0)], [0.625 * 0.5, 0.625 * sig(-2.0)]]  # P[q][cell]
    for cell in range(2):
        e0, e1 = math.exp(p[0][cell]), math.exp(p[1][cell])
        torch.testing.assert_close(prior[0, cell], torch.tensor([e0, e1]) / (e0 + e1))
    # Query 0 wins both cells, so query 1 is masked everywhere (invalid).
    assert attn.tolist() == [[[False, False], [True, True]]]


def test_perception_prior_shapes_for_omg_llava():
    prior, attn = perception_prior(
        torch.randn(1, 300, 134),
        torch.randn(1, 300, 64, 64),
        torch.randn(1, 300, 512),
        image_size=(256, 256),
    )
    assert prior.shape == (1, 256, 512) and attn.shape == (1, 300, 256)
    assert (~attn).sum(1).eq(1).all()  # every cell has exactly one winner


def test_expand_to_square_centres_the_original():
    img = Image.new("RGB", (4, 1), (255, 0, 0))
    sq = np.asarray(expand_to_square(img))
    assert sq.shape == (4, 4, 3)
    assert (sq[1] == [255, 0, 0]).all()  # offset (4 - 1) // 2 = 1
    assert (sq[0] == [122, 116, 104]).all() and (sq[2:] == [122, 116, 104]).all()


def test_image_to_tensor_normalises_the_padding_colour():
    x = image_to_tensor(Image.new("RGB", (64, 16), (10, 20, 30)), size=32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = [
        (v / 255 - m) / s for v, m, s in zip((122, 116, 104), IMAGE_MEAN, IMAGE_STD, strict=True)
    ]
    torch.testing.assert_close(x[:, 0, 0], torch.tensor(expected), atol=1e-5, rtol=0)


def test_masks_to_original_crops_the_padding():
    rows = torch.tensor([-1.0, 1.0, -1.0, 1.0]).view(1, 1, 4, 1).expand(1, 1, 4, 4)
    wide = masks_to_original(rows, original_size=(4, 2))  # W=4 > H=2: keep rows 1..2
    assert wide.shape == (1, 2, 4)
    assert wide[0, :, 0].tolist() == [True, False]
    tall = masks_to_original(rows.transpose(2, 3), original_size=(2, 4))  # keep columns 1..2
    assert tall.shape == (1, 4, 2)
    assert tall[0, 0].tolist() == [True, False]


def test_seg_hidden_states_takes_the_seg_tokens_own_state():
    seg = 9
    prompt_len, gen = 3, torch.tensor([5, seg, 6, seg, seg])  # last [SEG] is never fed back
    hidden = torch.arange(prompt_len + len(gen) - 1, dtype=torch.float32)[:, None]
    got = seg_hidden_states(hidden, gen, seg_token_id=seg)
    # Fed-back tokens sit at positions 3..6; [SEG] inputs at positions 4 and 6.
    assert got.flatten().tolist() == [4.0, 6.0]


def test_gcg_text_parsing_follows_upstream_quirks():
    from altp.models.omg.gcg_output import parse_gcg_text

    decoded = "<p> A man </p> [SEG] rides\n<p>a horse</p> [SEG] near 'the' sea.<|im_end|></s>"
    caption, phrases = parse_gcg_text(decoded)
    assert phrases == ["A man", "a horse"]
    # The newline is deleted, not replaced by a space, so "rides" and "a" merge once the tag goes.
    assert caption == "A man ridesa horse near 'the' sea."
    caption, _ = parse_gcg_text("'<p>dog</p> [SEG] on\ngrass'")
    assert caption == "dog ongrass"  # quotes stripped at the ends, newline deleted


def test_pad_colour_is_the_truncated_mean():
    # The torch-free copy of the padding colour must stay upstream's int(m * 255) of the mean.
    assert PAD_COLOUR == tuple(int(m * 255) for m in IMAGE_MEAN)
