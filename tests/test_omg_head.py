"""OMG-Seg head parts: positional encodings, mmcv attention semantics, pixel decoder, head paths."""

from __future__ import annotations

import math

import pytest
import torch

from altp.models.omg.mask2former import (
    Mask2FormerDecoderLayer,
    MultiheadAttention,
    sine_positional_encoding,
    sine_positional_encoding_3d,
)
from altp.models.omg.omg_head import OmgSegHead
from altp.models.omg.perception_prior import perception_prior
from altp.models.omg.pixel_decoder import MSDeformAttnPixelDecoder
from altp.models.omg.projector import OmgLlavaProjector, pixel_shuffle


def test_sine_encoding_hand_values():
    mask = torch.zeros(1, 1, 2, dtype=torch.bool)
    pos = sine_positional_encoding(mask, num_feats=2, normalize=False)  # dim_t = [1, 1]
    assert pos.shape == (1, 4, 1, 2)
    s1, c1, s2, c2 = math.sin(1), math.cos(1), math.sin(2), math.cos(2)
    expected = torch.tensor([[s1, s1], [c1, c1], [s1, s2], [c1, c2]]).view(
        1, 4, 1, 2
    )  # [y..., x...]
    torch.testing.assert_close(pos, expected)


def test_sine_encoding_3d_single_frame_adds_a_constant_z_term():
    mask = torch.zeros(1, 1, 3, 2, dtype=torch.bool)
    pos3 = sine_positional_encoding_3d(mask, num_feats=2)
    pos2 = sine_positional_encoding(mask[:, 0], num_feats=2)
    z = 2 * math.pi / (1 + 1e-6)  # normalised z of a single frame
    z_terms = torch.tensor([math.sin(z), math.cos(z), math.sin(z / 100), math.cos(z / 100)])
    torch.testing.assert_close(pos3[:, 0], pos2 + z_terms.view(1, 4, 1, 1))


def test_mmcv_attention_semantics():
    torch.manual_seed(0)
    mha = MultiheadAttention(embed_dims=8, num_heads=2)
    q, k = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    qpos, kpos = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    mask = torch.zeros(4, 3, 5, dtype=torch.bool)
    mask[:, :, 0] = True
    got = mha(q, k, k, query_pos=qpos, key_pos=kpos, attn_mask=mask)
    w, b = mha.attn.in_proj_weight, mha.attn.in_proj_bias
    Q = ((q + qpos) @ w[:8].T + b[:8]).view(2, 3, 2, 4).transpose(1, 2)
    K = ((k + kpos) @ w[8:16].T + b[8:16]).view(2, 5, 2, 4).transpose(1, 2)
    V = (k @ w[16:].T + b[16:]).view(2, 5, 2, 4).transpose(1, 2)  # value carries no position
    s = (Q @ K.transpose(-1, -2) / 2.0).masked_fill(mask.view(2, 2, 3, 5), float("-inf"))
    o = (s.softmax(-1) @ V).transpose(1, 2).reshape(2, 3, 8)
    expected = q + o @ mha.attn.out_proj.weight.T + mha.attn.out_proj.bias  # residual without pos
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_decoder_layer_order_and_names():
    layer = Mask2FormerDecoderLayer(embed_dims=8, num_heads=2, feedforward_channels=16)
    names = set(layer.state_dict())
    assert {
        "cross_attn.attn.in_proj_weight",
        "self_attn.attn.out_proj.bias",
        "ffn.layers.0.0.weight",
    } <= names
    assert {"ffn.layers.1.weight", "norms.2.bias"} <= names
    torch.manual_seed(1)
    q, k, qp, kp = (
        torch.randn(1, 3, 8),
        torch.randn(1, 4, 8),
        torch.randn(1, 3, 8),
        torch.randn(1, 4, 8),
    )
    x = layer.norms[0](layer.cross_attn(q, k, k, query_pos=qp, key_pos=kp))
    x = layer.norms[1](layer.self_attn(x, query_pos=qp))
    x = layer.norms[2](x + layer.ffn.layers[1](torch.relu(layer.ffn.layers[0][0](x))))
    got = layer(q, key=k, query_pos=qp, key_pos=kp, cross_attn_mask=None)
    torch.testing.assert_close(got, x)


def test_pixel_decoder_key_layout_matches_mmdet():
    with torch.device("meta"):
        dec = MSDeformAttnPixelDecoder()
    shapes = {k: tuple(v.shape) for k, v in dec.state_dict().items()}
    assert shapes["input_convs.0.conv.weight"] == (256, 1536, 1, 1)
    assert shapes["input_convs.2.gn.weight"] == (256,)
    assert shapes["encoder.layers.5.self_attn.sampling_offsets.weight"] == (192, 256)
    assert shapes["encoder.layers.0.ffn.layers.0.0.weight"] == (1024, 256)
    assert shapes["lateral_convs.0.conv.weight"] == (256, 192, 1, 1)
    assert "lateral_convs.0.conv.bias" not in shapes and "output_convs.0.conv.bias" not in shapes
    assert shapes["output_convs.0.conv.weight"] == (256, 256, 3, 3)
    assert shapes["mask_feature.weight"] == (256, 256, 1, 1)
    assert shapes["level_encoding.weight"] == (3, 256)


def _tiny_feats(B: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, c, s, s, generator=g) for c, s in ((8, 32), (16, 16), (32, 8), (64, 4))]


def _tiny_head() -> OmgSegHead:
    torch.manual_seed(0)
    class_embed = torch.nn.functional.normalize(torch.randn(5, 2, 12), dim=-1)
    pixel = MSDeformAttnPixelDecoder(
        in_channels=(8, 16, 32, 64),
        feat_channels=32,
        out_channels=32,
        num_layers=2,
        num_heads=4,
        num_groups=4,
    )
    return OmgSegHead(
        class_embed=class_embed,
        feat_channels=32,
        num_queries=7,
        num_layers=3,
        num_heads=4,
        feedforward_channels=64,
        pixel_decoder=pixel,
    ).eval()


@torch.inference_mode()
def test_pixel_decoder_shapes():
    mask_feature, memories = _tiny_head().pixel_decoder(_tiny_feats())
    assert mask_feature.shape == (2, 32, 32, 32)
    assert [tuple(m.shape) for m in memories] == [(2, 32, 4, 4), (2, 32, 8, 8), (2, 32, 16, 16)]
    with pytest.raises(ValueError, match="feature maps"):
        _tiny_head().pixel_decoder(_tiny_feats()[:3])


@torch.inference_mode()
def test_panoptic_and_seg_paths():
    head = _tiny_head()
    out = head.panoptic(_tiny_feats())
    assert out.mask_cls.shape == (2, 7, 6) and out.mask_pred.shape == (2, 7, 32, 32)
    assert out.queries.shape == (2, 7, 64)
    # The background column is a zero embedding: cosine 0, whatever the query.
    assert torch.all(out.mask_cls[..., -1] == 0)
    assert torch.isfinite(out.mask_cls).all() and torch.isfinite(out.mask_pred).all()

    seg = torch.randn(3, 64)
    idx = torch.tensor([1, 0, 1])
    masks = head.decode_seg(seg, out.cache, idx)
    assert len(masks) == 1 + 3 and masks[-1].shape == (3, 1, 32, 32)
    # Decoding against image 1 of the batch equals decoding with image 1 alone.
    alone = head.panoptic([f[1:2] for f in _tiny_feats()])
    solo = head.decode_seg(seg[[0, 2]], alone.cache, torch.tensor([0, 0]))
    torch.testing.assert_close(masks[-1][[0, 2]], solo[-1], rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_visual_path_shapes_end_to_end():
    """Backbone stages -> head -> prior -> projector, with tiny widths."""
    head = _tiny_head()
    feats = _tiny_feats(B=1)
    out = head.panoptic(feats)
    prior, attn = perception_prior(
        out.mask_cls, out.mask_pred, out.queries, image_size=(128, 128), grid=(2, 2)
    )
    clip = pixel_shuffle(feats[-1]).flatten(2).transpose(1, 2)  # (1, 4, 256)
    proj = OmgLlavaProjector(pixel_dims=256, query_dims=64, llm_dims=16)
    visual = proj(torch.cat([clip, prior], dim=-1), out.queries, attn)
    assert visual.pixel_tokens.shape == (1, 4, 16)
    n_obj = int((~attn).any(-1).sum())
    assert 1 <= n_obj <= 4 and visual.sequence(0).shape == (4 + 1 + n_obj, 16)
