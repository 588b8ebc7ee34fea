"""Pure-PyTorch multi-scale deformable attention (Deformable DETR), mmcv-compatible.

OMG-Seg's pixel decoder (mmdet ``MSDeformAttnPixelDecoder``) is built on mmcv's
``MultiScaleDeformableAttention``, whose fast path is a CUDA extension that has
to be compiled against one torch build. This module reimplements the same maths
with :func:`torch.nn.functional.grid_sample` so the official weights run on any
device and any torch, with the parameter names mmcv uses
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``)
so a checkpoint's ``...self_attn.*`` tensors load without renaming.

Conventions (identical to mmcv ``multi_scale_deformable_attn_pytorch`` and the
CUDA kernel ``ms_deform_attn_im2col_bilinear``):

* ``spatial_shapes`` is ``(L, 2)`` with rows ``(H_l, W_l)``; the value tensor
  holds the levels back to back, each flattened row-major (index ``y * W + x``).
* Sampling locations are normalised ``(x, y)`` in ``[0, 1]`` where ``0`` is the
  *left/top edge* of the feature map and ``1`` its right/bottom edge, so pixel
  ``(i, j)`` has its centre at ``((j + 0.5) / W, (i + 0.5) / H)``. That is
  ``grid_sample(..., align_corners=False)`` after mapping ``loc -> 2 * loc - 1``.
* Bilinear interpolation with zero padding: corners outside the map add 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MultiScaleDeformableAttention",
    "multi_scale_deformable_attention",
    "pixel_centre_reference_points",
]

SpatialShapes = Tensor | Sequence[tuple[int, int]]


def _shapes_as_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, Tensor):
        if spatial_shapes.ndim != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(
                f"spatial_shapes must have shape (num_levels, 2) with rows (H, W), got {tuple(spatial_shapes.shape)}"
            )
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Core of multi-scale deformable attention (no projections).

    Args:
        value: ``(B, S, M, D)``: ``S = sum_l H_l * W_l`` keys, ``M`` heads of
            ``D`` channels each.
        spatial_shapes: ``(L, 2)`` tensor or list of ``(H_l, W_l)``.
        sampling_locations: ``(B, Q, M, L, P, 2)`` normalised ``(x, y)``; see
            the module docstring for the pixel-centre convention.
        attention_weights: ``(B, Q, M, L, P)``; already normalised by the
            caller (the module applies a softmax over ``L * P``).

    Returns:
        ``(B, Q, M * D)``, heads concatenated head-major (``m * D + d``).
    """
    shapes = _shapes_as_list(spatial_shapes)
    if value.ndim != 4:
        raise ValueError(f"value must be (B, S, M, D), got shape {tuple(value.shape)}")
    B, S, M, D = value.shape
    if sampling_locations.ndim != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"sampling_locations must be (B, Q, M, L, P, 2), got {tuple(sampling_locations.shape)}"
        )
    _, Q, M_loc, L, P, _ = sampling_locations.shape
    if M_loc != M or L != len(shapes):
        raise ValueError(
            f"sampling_locations has {M_loc} heads and {L} levels but value has {M} heads and "
            f"spatial_shapes lists {len(shapes)} levels; they must agree"
        )
    if sum(h * w for h, w in shapes) != S:
        raise ValueError(
            f"value has {S} keys but spatial_shapes {shapes} sum to {sum(h * w for h, w in shapes)}"
        )
    if tuple(attention_weights.shape) != (B, Q, M, L, P):
        raise ValueError(
            f"attention_weights must be {(B, Q, M, L, P)}, got {tuple(attention_weights.shape)}"
        )

    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * sampling_locations.to(value.dtype) - 1.0  # grid_sample's [-1, 1] frame
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # (B, HW, M, D) -> (B * M, D, H, W): one image per (batch, head).
        v = value_per_level[level].permute(0, 2, 3, 1).reshape(B * M, D, h, w)
        # (B, Q, M, P, 2) -> (B * M, Q, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).reshape(B * M, Q, P, 2)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B * M, D, Q, P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B * M, D, Q, L * P)
    weights = attention_weights.to(value.dtype).transpose(1, 2).reshape(B * M, 1, Q, L * P)
    out = (stacked * weights).sum(-1)  # (B * M, D, Q)
    return out.view(B, M * D, Q).transpose(1, 2).contiguous()


def pixel_centre_reference_points(
    spatial_shapes: SpatialShapes, *, batch_size: int, device: torch.device | None = None
) -> Tensor:
    """Reference points of mmdet's ``MSDeformAttnPixelDecoder`` encoder.

    Every key of every level is a query whose reference point is its own pixel
    centre, ``((x + 0.5) / W_l, (y + 0.5) / H_l)`` (mmdet builds these with
    ``MlvlPointGenerator`` offset 0.5 divided by ``W_l * stride``), repeated for
    all levels because the decoder has no padding (valid ratios are 1).

    Returns:
        ``(batch_size, sum_l H_l * W_l, L, 2)`` in ``(x, y)`` order, levels in
        the order of ``spatial_shapes``, row-major within a level.
    """
    shapes = _shapes_as_list(spatial_shapes)
    per_level = []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        per_level.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1))
    points = torch.cat(per_level, dim=0)  # (S, 2)
    return points[None, :, None, :].expand(batch_size, -1, len(shapes), -1).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """mmcv ``MultiScaleDeformableAttention`` (batch-first), inference semantics.

    ``forward`` returns ``identity + output_proj(attention)``: like mmcv, the
    residual is added inside the module (dropout is omitted: OMG-Seg uses 0.0
    and this port is inference-only).

    Args:
        embed_dims: channels ``C`` of queries and values.
        num_heads: heads ``M``; ``C * value_proj_ratio`` must divide by it.
        num_levels: feature levels ``L``.
        num_points: sampling points ``P`` per head and level.
        value_proj_ratio: mmcv's expansion of ``value_proj`` (1.0 in OMG-Seg).
    """

    def __init__(
        self,
        *,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        value_proj_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        value_dims = int(embed_dims * value_proj_ratio)
        if embed_dims % num_heads != 0 or value_dims % num_heads != 0:
            raise ValueError(
                f"embed_dims ({embed_dims}) and value dims ({value_dims}) must be divisible by "
                f"num_heads ({num_heads})"
            )
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, value_dims)
        self.output_proj = nn.Linear(value_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmcv's init: offsets start on a ring of ``num_heads`` directions with
        radius ``point index + 1``, attention is uniform, projections Xavier.
        Random tiny models then sample non-degenerate locations."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(
        self,
        query: Tensor,
        *,
        reference_points: Tensor,
        spatial_shapes: SpatialShapes,
        value: Tensor | None = None,
        identity: Tensor | None = None,
        query_pos: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to ``P`` learned points per head and level.

        Args:
            query: ``(B, Q, C)``.
            reference_points: ``(B, Q, L, 2)`` normalised ``(x, y)`` centres, or
                ``(B, Q, L, 4)`` boxes ``(cx, cy, w, h)``; offsets are divided by
                ``(W_l, H_l)`` for points and scaled by ``0.5 * (w, h) / P`` for
                boxes, as in mmcv.
            spatial_shapes: ``(L, 2)`` rows ``(H_l, W_l)``.
            value: ``(B, S, C)``; defaults to ``query`` (encoder self-attention).
            identity: residual added to the output; defaults to ``query``
                *before* ``query_pos`` is added.
            query_pos: ``(B, Q, C)`` positional embedding added to ``query``.
            key_padding_mask: ``(B, S)`` bool, True where the key is padding
                (its projected value is zeroed).

        Returns:
            ``(B, Q, C)``.
        """
        shapes = _shapes_as_list(spatial_shapes)
        if len(shapes) != self.num_levels:
            raise ValueError(
                f"this attention was built for {self.num_levels} levels, got spatial_shapes {shapes}"
            )
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        B, Q, _ = query.shape
        S = value.shape[1]

        v = self.value_proj(value)
        if key_padding_mask is not None:
            v = v.masked_fill(key_padding_mask[..., None], 0.0)
        v = v.view(B, S, self.num_heads, -1)  # (B, S, M, D)
        M, L, P = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, M, L * P).softmax(-1).view(B, Q, M, L, P)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: normalise by (W_l, H_l).
            wh = torch.tensor(
                [[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device
            )
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / wh[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), got {tuple(reference_points.shape)}"
            )
        out = multi_scale_deformable_attention(v, shapes, locations, weights)
        return identity + self.output_proj(out)
