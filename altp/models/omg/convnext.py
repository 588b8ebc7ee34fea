"""ConvNeXt trunk (timm ``convnext_large`` layout) returning the four stage outputs.

OMG-Seg's backbone is the trunk of open_clip ``convnext_large_d_320``
(``timm_model_name: convnext_large``), wrapped by ``OpenCLIPBackbone_omgseg``
(``omg_llava/model/convnext_clip/openclip_backbone.py``) as ``stem``,
``layer1..layer4`` (= ``trunk.stages[0..3]``), ``norm_pre`` (Identity) and an
unused ``head``; ``forward`` returns every stage output. Parameter names follow
timm so open_clip's ``visual.trunk.*`` keys load after stripping that prefix:
``stem.0`` (4x4 stride-4 conv), ``stem.1`` (channels-first LayerNorm),
``stages.i.downsample.{0,1}`` (LayerNorm, 2x2 stride-2 conv; stages 1-3),
``stages.i.blocks.j.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}``.

Block: ``x + gamma * fc2(GELU(fc1(LN(dwconv7x7(x)))))`` (LayerNorm over channels,
eps 1e-6, exact GELU; drop-path is identity at inference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CONVNEXT_LARGE", "ConvNeXtTrunk"]

CONVNEXT_LARGE = {"depths": (3, 3, 27, 3), "dims": (192, 384, 768, 1536)}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map (timm ``LayerNorm2d``)."""

    def forward(self, input: Tensor) -> Tensor:  # nn.LayerNorm's parameter name
        x = input.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class _Mlp(nn.Module):
    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvNeXtBlock(nn.Module):
    def __init__(self, *, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim=dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))  # timm's layer-scale init

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        return x + y * self.gamma.view(1, -1, 1, 1)


class ConvNeXtStage(nn.Module):
    def __init__(self, *, in_dim: int, dim: int, depth: int, downsample: bool, eps: float = 1e-6):
        super().__init__()
        self.downsample = (
            nn.Sequential(
                LayerNorm2d(in_dim, eps=eps), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2)
            )
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim=dim, eps=eps) for _ in range(depth)))

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtTrunk(nn.Module):
    """ConvNeXt feature extractor.

    Args:
        depths: blocks per stage (``(3, 3, 27, 3)`` for ConvNeXt-L).
        dims: channels per stage (``(192, 384, 768, 1536)``).
        in_channels: image channels.

    ``forward(x (B, 3, H, W))`` returns the four stage outputs
    ``(B, dims[i], H / 2**(i + 2), W / 2**(i + 2))``, finest first, each contiguous
    (NCHW strides) as upstream returns them.
    """

    def __init__(
        self,
        *,
        depths: tuple[int, ...] = CONVNEXT_LARGE["depths"],
        dims: tuple[int, ...] = CONVNEXT_LARGE["dims"],
        in_channels: int = 3,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {depths} and dims {dims} must have one entry per stage")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0], eps=eps)
        )
        self.stages = nn.Sequential(
            *(
                ConvNeXtStage(
                    in_dim=dims[max(i - 1, 0)],
                    dim=dims[i],
                    depth=depths[i],
                    downsample=i > 0,
                    eps=eps,
                )
                for i in range(len(dims))
            )
        )

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            # Upstream (OpenCLIPBackbone_omgseg.forward) appends ``x.contiguous()``. The block's
            # permutes leave ``x`` with channels-last strides, and the pixel decoder's 1x1
            # convolutions round differently on those (mask features off by ~2e-5 relative);
            # contiguous stage outputs make them bitwise equal to upstream's.
            outs.append(x.contiguous())
        return tuple(outs)
