"""Mask2Former building blocks as mmcv/mmdet 3.x define them, without mmcv.

Semantics and parameter names follow:

* mmcv ``cnn/bricks/transformer.py``: ``MultiheadAttention`` (wraps
  ``nn.MultiheadAttention`` as ``.attn``; adds ``query_pos`` to the query and
  ``key_pos`` to the key, never to the value; returns ``query + out``, the
  residual taken *before* the positional embedding) and ``FFN``
  (``layers.0.0`` Linear, ReLU, ``layers.1`` Linear; returns ``x + out``).
* mmdet ``models/layers/transformer/mask2former_layers.py``: decoder layer
  ``cross_attn -> norms[0] -> self_attn -> norms[1] -> ffn -> norms[2]``; the
  decoder's ``post_norm``.
* mmdet ``deformable_detr_layers.py``: encoder layer ``self_attn
  (MultiScaleDeformableAttention) -> norms[0] -> ffn -> norms[1]``.
* mmdet ``SinePositionalEncoding`` and mmtracking/mmdet
  ``SinePositionalEncoding3D`` (which adds a z term even for one frame).

Dropout is omitted (every OMG-Seg rate is 0 and this is inference code).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from altp.models.omg.deform_attn import MultiScaleDeformableAttention, SpatialShapes

__all__ = [
    "FFN",
    "DeformableEncoderLayer",
    "Mask2FormerDecoder",
    "Mask2FormerDecoderLayer",
    "MultiheadAttention",
    "sine_positional_encoding",
    "sine_positional_encoding_3d",
]


def _sine(embed: Tensor, dim_t: Tensor) -> Tensor:
    """``embed (..., 1) / dim_t`` -> interleaved ``sin, cos`` pairs ``(..., len(dim_t))``."""
    pos = embed / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def _dim_t(num_feats: int, temperature: float, device: torch.device) -> Tensor:
    d = torch.arange(num_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * torch.div(d, 2, rounding_mode="floor") / num_feats)


def sine_positional_encoding(
    mask: Tensor,
    *,
    num_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    eps: float = 1e-6,
) -> Tensor:
    """mmdet ``SinePositionalEncoding``: ``mask (B, H, W)`` (True = padding) ->
    ``(B, 2 * num_feats, H, W)``, channels ``[y terms, x terms]``."""
    not_mask = (~mask.bool()).to(torch.float32)
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    if normalize:
        y = y / (y[:, -1:, :] + eps) * scale
        x = x / (x[:, :, -1:] + eps) * scale
    dim_t = _dim_t(num_feats, temperature, mask.device)
    pos = torch.cat([_sine(y[..., None], dim_t), _sine(x[..., None], dim_t)], dim=-1)
    return pos.permute(0, 3, 1, 2)


def sine_positional_encoding_3d(
    mask: Tensor,
    *,
    num_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    eps: float = 1e-6,
) -> Tensor:
    """``SinePositionalEncoding3D``: ``mask (B, T, H, W)`` -> ``(B, T, 2 * num_feats, H, W)``.

    ``cat(y terms, x terms) + z terms`` where the z terms use ``2 * num_feats``
    frequencies; with ``T = 1`` they are a constant vector (``z = scale``
    after normalisation) that upstream still adds.
    """
    not_mask = (~mask.bool()).to(torch.float32)
    z = not_mask.cumsum(1)
    y = not_mask.cumsum(2)
    x = not_mask.cumsum(3)
    if normalize:
        z = z / (z[:, -1:] + eps) * scale
        y = y / (y[:, :, -1:] + eps) * scale
        x = x / (x[:, :, :, -1:] + eps) * scale
    dim_t = _dim_t(num_feats, temperature, mask.device)
    dim_t_z = _dim_t(2 * num_feats, temperature, mask.device)
    pos = torch.cat([_sine(y[..., None], dim_t), _sine(x[..., None], dim_t)], dim=-1)
    pos = pos + _sine(z[..., None], dim_t_z)
    return pos.permute(0, 1, 4, 2, 3)


class MultiheadAttention(nn.Module):
    """mmcv ``MultiheadAttention`` (batch-first): ``query + MHA(query + qpos, key + kpos, value)``."""

    def __init__(self, *, embed_dims: int, num_heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, batch_first=True)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        query_pos: Tensor | None = None,
        key_pos: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """``query (B, Q, C)``, ``key/value (B, K, C)``; ``attn_mask (B * heads, Q, K)``
        bool, True = may *not* attend (``nn.MultiheadAttention`` convention)."""
        key = query if key is None else key
        value = key if value is None else value
        if key_pos is None and query_pos is not None and query_pos.shape == key.shape:
            key_pos = query_pos  # mmcv's fallback, used by self-attention
        q = query if query_pos is None else query + query_pos
        k = key if key_pos is None else key + key_pos
        out = self.attn(q, k, value, attn_mask=attn_mask, need_weights=False)[0]
        return query + out


class FFN(nn.Module):
    """mmcv ``FFN`` with two layers and ReLU: ``x + W2 relu(W1 x)``."""

    def __init__(self, *, embed_dims: int, feedforward_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), nn.ReLU()),
            nn.Linear(feedforward_channels, embed_dims),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layers(x)


class Mask2FormerDecoderLayer(nn.Module):
    """Masked cross-attention, self-attention, FFN; post-norm after each."""

    def __init__(
        self, *, embed_dims: int = 256, num_heads: int = 8, feedforward_channels: int = 2048
    ):
        super().__init__()
        self.self_attn = MultiheadAttention(embed_dims=embed_dims, num_heads=num_heads)
        self.cross_attn = MultiheadAttention(embed_dims=embed_dims, num_heads=num_heads)
        self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))

    def forward(
        self,
        query: Tensor,
        *,
        key: Tensor,
        query_pos: Tensor,
        key_pos: Tensor,
        cross_attn_mask: Tensor | None,
    ) -> Tensor:
        """``query (B, Q, C)``; ``key (B, HW, C)`` is also the value."""
        query = self.cross_attn(
            query, key, key, query_pos=query_pos, key_pos=key_pos, attn_mask=cross_attn_mask
        )
        query = self.norms[0](query)
        query = self.self_attn(query, query, query, query_pos=query_pos, key_pos=query_pos)
        query = self.norms[1](query)
        return self.norms[2](self.ffn(query))


class Mask2FormerDecoder(nn.Module):
    """mmdet ``Mask2FormerTransformerDecoder``: ``layers`` and ``post_norm`` (the
    loop over layers lives in the head, which interleaves mask prediction)."""

    def __init__(
        self,
        *,
        num_layers: int = 9,
        embed_dims: int = 256,
        num_heads: int = 8,
        feedforward_channels: int = 2048,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            Mask2FormerDecoderLayer(
                embed_dims=embed_dims,
                num_heads=num_heads,
                feedforward_channels=feedforward_channels,
            )
            for _ in range(num_layers)
        )
        self.post_norm = nn.LayerNorm(embed_dims)


class DeformableEncoderLayer(nn.Module):
    """Deformable-DETR encoder layer as used by ``MSDeformAttnPixelDecoder``."""

    def __init__(
        self,
        *,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 3,
        num_points: int = 4,
        feedforward_channels: int = 1024,
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            embed_dims=embed_dims, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(2))

    def forward(
        self,
        query: Tensor,
        *,
        query_pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: SpatialShapes,
    ) -> Tensor:
        """``query (B, S, C)`` over all levels; see :class:`MultiScaleDeformableAttention`."""
        query = self.self_attn(
            query,
            query_pos=query_pos,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
        )
        query = self.norms[0](query)
        return self.norms[1](self.ffn(query))
