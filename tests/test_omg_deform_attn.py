"""Multi-scale deformable attention against an explicit bilinear-interpolation oracle.

The oracle never calls grid_sample: it maps a normalised location to pixel
coordinates (``x * W - 0.5``, the pixel-centre convention of mmcv's CUDA kernel),
reads the four neighbours with explicit bounds checks (zero outside) and weights
them by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from altp.models.omg.deform_attn import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
    pixel_centre_reference_points,
)


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (D, H, W); (x, y) normalised, 0 = left/top edge. Zero padding."""
    D, H, W = img.shape
    px, py = x * W - 0.5, y * H - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    out = torch.zeros(D, dtype=img.dtype)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            if 0 <= xi < W and 0 <= yi < H:
                out += wx * wy * img[:, yi, xi]
    return out


def _oracle(value, shapes, locs, weights):
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = locs.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(B, Q, M * D, dtype=value.dtype)
    for b in range(B):
        for q in range(Q):
            for m in range(M):
                acc = torch.zeros(D, dtype=value.dtype)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl] : starts[lvl + 1], m].T.reshape(D, h, w)
                    for p in range(P):
                        x, y = locs[b, q, m, lvl, p].tolist()
                        acc += weights[b, q, m, lvl, p] * _bilinear(img, x, y)
                out[b, q, m * D : (m + 1) * D] = acc
    return out


SHAPES = [(3, 4), (2, 3)]


def _random_case(seed: int = 0, B: int = 2, Q: int = 3, M: int = 2, D: int = 4, P: int = 2):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in SHAPES)
    value = torch.randn(B, S, M, D, generator=g, dtype=torch.float64)
    # Range past [0, 1] so zero padding at every border is exercised.
    locs = torch.rand(B, Q, M, len(SHAPES), P, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    weights = torch.rand(B, Q, M, len(SHAPES), P, generator=g, dtype=torch.float64)
    return value, locs, weights


def test_core_matches_explicit_bilinear_oracle():
    value, locs, weights = _random_case()
    got = multi_scale_deformable_attention(value, SHAPES, locs, weights)
    assert got.shape == (2, 3, 8)
    torch.testing.assert_close(got, _oracle(value, SHAPES, locs, weights), rtol=1e-10, atol=1e-10)


def test_core_accepts_tensor_shapes():
    value, locs, weights = _random_case(seed=1)
    a = multi_scale_deformable_attention(value, SHAPES, locs, weights)
    b = multi_scale_deformable_attention(value, torch.tensor(SHAPES), locs, weights)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_hand_computed_points():
    # One level 2x2, one head, D=1: values 1 2 / 3 4.
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)
    pts = [(0.25, 0.25), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (5.0, 5.0), (0.0, 0.25)]
    expected = [1.0, 2.0, 2.5, 3.0, 0.0, 0.5]  # last: halfway to the zero padding
    locs = torch.tensor(pts, dtype=torch.float64).view(1, len(pts), 1, 1, 1, 2)
    w = torch.ones(1, len(pts), 1, 1, 1, dtype=torch.float64)
    got = multi_scale_deformable_attention(value, [(2, 2)], locs, w)
    torch.testing.assert_close(got.flatten(), torch.tensor(expected, dtype=torch.float64))


def test_shape_errors_say_what_is_wrong():
    value, locs, weights = _random_case()
    with pytest.raises(ValueError, match="spatial_shapes"):
        multi_scale_deformable_attention(value, [(3, 4), (2, 2)], locs, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        multi_scale_deformable_attention(value, SHAPES, locs, weights[..., :1])


def _module_oracle(mod: MultiScaleDeformableAttention, query, ref, value, query_pos, mask):
    """Module maths written out: projections, offset normalisation, softmax, oracle core."""
    B, Q, C = query.shape
    M, L, P = mod.num_heads, mod.num_levels, mod.num_points
    q = query + query_pos
    v = value @ mod.value_proj.weight.T + mod.value_proj.bias
    v = v.masked_fill(mask[..., None], 0.0).view(B, -1, M, C // M)
    off = (q @ mod.sampling_offsets.weight.T + mod.sampling_offsets.bias).view(B, Q, M, L, P, 2)
    logits = (q @ mod.attention_weights.weight.T + mod.attention_weights.bias).view(B, Q, M, L * P)
    attn = torch.softmax(logits, -1).view(B, Q, M, L, P)
    locs = torch.empty_like(off)
    for lvl, (h, w) in enumerate(SHAPES):
        locs[..., lvl, :, 0] = ref[:, :, None, lvl, None, 0] + off[..., lvl, :, 0] / w
        locs[..., lvl, :, 1] = ref[:, :, None, lvl, None, 1] + off[..., lvl, :, 1] / h
    core = _oracle(v, SHAPES, locs, attn)
    return query + core @ mod.output_proj.weight.T + mod.output_proj.bias


def test_module_matches_written_out_maths():
    torch.manual_seed(0)
    mod = MultiScaleDeformableAttention(
        embed_dims=8, num_heads=2, num_levels=2, num_points=2
    ).double()
    for p in mod.parameters():  # non-trivial weights everywhere
        torch.nn.init.normal_(p, std=0.3)
    B, S = 2, sum(h * w for h, w in SHAPES)
    value = torch.randn(B, S, 8, dtype=torch.float64)
    query = torch.randn(B, 3, 8, dtype=torch.float64)
    pos = torch.randn(B, 3, 8, dtype=torch.float64)
    ref = torch.rand(B, 3, 2, 2, dtype=torch.float64)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[1, -4:] = True
    got = mod(
        query,
        reference_points=ref,
        spatial_shapes=SHAPES,
        value=value,
        query_pos=pos,
        key_padding_mask=mask,
    )
    torch.testing.assert_close(
        got, _module_oracle(mod, query, ref, value, pos, mask), rtol=1e-9, atol=1e-9
    )


def test_module_parameter_names_match_mmcv():
    mod = MultiScaleDeformableAttention(embed_dims=256, num_heads=8, num_levels=3, num_points=4)
    shapes = {k: tuple(v.shape) for k, v in mod.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (192, 256),
        "sampling_offsets.bias": (192,),
        "attention_weights.weight": (96, 256),
        "attention_weights.bias": (96,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }


def test_mmcv_init_offsets_form_a_ring():
    mod = MultiScaleDeformableAttention(embed_dims=16, num_heads=4, num_levels=2, num_points=3)
    bias = mod.sampling_offsets.bias.view(4, 2, 3, 2)
    # Head 0 points along +x with radius point_index + 1; head 1 along +y.
    torch.testing.assert_close(bias[0, 1, :, 0], torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(bias[1, 0, :, 1], torch.tensor([1.0, 2.0, 3.0]))
    assert torch.all(mod.attention_weights.weight == 0)


def test_pixel_centre_reference_points():
    ref = pixel_centre_reference_points([(2, 4), (1, 2)], batch_size=2)
    assert ref.shape == (2, 10, 2, 2)
    # Key 5 = level 0, row 1, col 1 -> ((1 + .5) / 4, (1 + .5) / 2); same for every level slot.
    torch.testing.assert_close(ref[1, 5, 1], torch.tensor([0.375, 0.75]))
    torch.testing.assert_close(ref[0, 9, 0], torch.tensor([0.75, 0.5]))
