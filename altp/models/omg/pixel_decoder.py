"""mmdet ``MSDeformAttnPixelDecoder`` (Mask2Former's pixel decoder) in plain PyTorch.

Port of mmdet ``models/layers/msdeformattn_pixel_decoder.py`` with OMG-Seg's
settings (``omg_llava/configs/finetune/*.py``, ``pixel_decoder``): inputs are
the four ConvNeXt stages (channels ``in_channels``, strides 4/8/16/32); the
three coarsest go through a 6-layer deformable encoder, the finest gets one FPN
step. Parameter names match mmdet (``input_convs.i.conv/gn``,
``encoder.layers.i.*``, ``level_encoding``, ``lateral_convs.0``,
``output_convs.0``, ``mask_feature``) so ``panoptic_head.pixel_decoder.*`` keys
load after stripping that prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from altp.models.omg.deform_attn import pixel_centre_reference_points
from altp.models.omg.mask2former import DeformableEncoderLayer, sine_positional_encoding

__all__ = ["ConvGN", "MSDeformAttnPixelDecoder"]


class ConvGN(nn.Module):
    """mmcv ``ConvModule`` with GroupNorm: ``conv -> gn -> (ReLU)``; names ``conv``, ``gn``."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool,
        relu: bool,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.gn = nn.GroupNorm(num_groups, out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.gn(self.conv(x))
        return torch.relu(x) if self.relu else x


class _Encoder(nn.Module):
    # A container so the keys read ``encoder.layers.i.*`` as in mmdet.
    def __init__(self, layers: list[DeformableEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class MSDeformAttnPixelDecoder(nn.Module):
    """Multi-scale deformable-attention pixel decoder.

    Args:
        in_channels: channels of the backbone stages, finest first
            (``[192, 384, 768, 1536]`` for ConvNeXt-L).
        feat_channels / out_channels: 256 / 256 in OMG-Seg.
        num_encoder_levels: coarsest stages fed to the encoder (3).
        num_layers, num_heads, num_points, feedforward_channels: encoder (6, 8, 4, 1024).
        num_groups: GroupNorm groups (32).
    """

    def __init__(
        self,
        *,
        in_channels: tuple[int, ...] = (192, 384, 768, 1536),
        feat_channels: int = 256,
        out_channels: int = 256,
        num_encoder_levels: int = 3,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        feedforward_channels: int = 1024,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        n_in = len(in_channels)
        if not 1 <= num_encoder_levels < n_in:
            raise ValueError(
                f"num_encoder_levels must be in [1, {n_in - 1}] for {n_in} inputs, got {num_encoder_levels}"
            )
        self.num_inputs = n_in
        self.num_encoder_levels = num_encoder_levels
        self.feat_channels = feat_channels
        # Coarsest first, as mmdet builds them.
        self.input_convs = nn.ModuleList(
            ConvGN(
                in_channels=in_channels[i],
                out_channels=feat_channels,
                kernel_size=1,
                bias=True,
                relu=False,
                num_groups=num_groups,
            )
            for i in range(n_in - 1, n_in - num_encoder_levels - 1, -1)
        )
        self.encoder = _Encoder(
            [
                DeformableEncoderLayer(
                    embed_dims=feat_channels,
                    num_heads=num_heads,
                    num_levels=num_encoder_levels,
                    num_points=num_points,
                    feedforward_channels=feedforward_channels,
                )
                for _ in range(num_layers)
            ]
        )
        self.level_encoding = nn.Embedding(num_encoder_levels, feat_channels)
        fpn_levels = range(n_in - num_encoder_levels - 1, -1, -1)
        self.lateral_convs = nn.ModuleList(
            ConvGN(
                in_channels=in_channels[i],
                out_channels=feat_channels,
                kernel_size=1,
                bias=False,
                relu=False,
                num_groups=num_groups,
            )
            for i in fpn_levels
        )
        self.output_convs = nn.ModuleList(
            ConvGN(
                in_channels=feat_channels,
                out_channels=feat_channels,
                kernel_size=3,
                bias=False,
                relu=True,
                num_groups=num_groups,
            )
            for _ in fpn_levels
        )
        self.mask_feature = nn.Conv2d(feat_channels, out_channels, kernel_size=1)

    def forward(self, feats: list[Tensor] | tuple[Tensor, ...]) -> tuple[Tensor, list[Tensor]]:
        """Decode backbone features.

        Args:
            feats: ``num_inputs`` maps ``(B, C_i, H_i, W_i)``, finest first.

        Returns:
            ``mask_feature (B, out_channels, H_0, W_0)`` and the encoder outputs
            ``[(B, C, H, W)]`` coarsest first (``num_encoder_levels`` of them).
        """
        if len(feats) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} feature maps, got {len(feats)}")
        B = feats[0].shape[0]
        tokens, pos, shapes = [], [], []
        for i in range(self.num_encoder_levels):
            feat = feats[self.num_inputs - 1 - i]
            h, w = feat.shape[-2:]
            no_padding = torch.zeros(B, h, w, dtype=torch.bool, device=feat.device)
            level_pos = sine_positional_encoding(no_padding, num_feats=self.feat_channels // 2)
            level_pos = level_pos.to(feat.dtype) + self.level_encoding.weight[i].view(1, -1, 1, 1)
            tokens.append(self.input_convs[i](feat).flatten(2).transpose(1, 2))  # (B, hw, C)
            pos.append(level_pos.flatten(2).transpose(1, 2))
            shapes.append((int(h), int(w)))
        query = torch.cat(tokens, dim=1)
        query_pos = torch.cat(pos, dim=1)
        ref = pixel_centre_reference_points(shapes, batch_size=B, device=query.device).to(
            query.dtype
        )
        for layer in self.encoder.layers:
            query = layer(query, query_pos=query_pos, reference_points=ref, spatial_shapes=shapes)
        outs = [
            part.transpose(1, 2).reshape(B, -1, h, w)
            for part, (h, w) in zip(
                query.split([h * w for h, w in shapes], dim=1), shapes, strict=True
            )
        ]
        for j, level in enumerate(range(self.num_inputs - self.num_encoder_levels - 1, -1, -1)):
            lateral = self.lateral_convs[j](feats[level])
            up = F.interpolate(
                outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            outs.append(self.output_convs[j](lateral + up))
        return self.mask_feature(outs[-1]), outs[: self.num_encoder_levels]
