"""ConvNeXt trunk: timm key layout at ConvNeXt-L size, stage shapes, and one block written out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from altp.models.omg.convnext import ConvNeXtTrunk


def test_convnext_large_key_layout():
    with torch.device("meta"):
        trunk = ConvNeXtTrunk()
    shapes = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
    assert shapes["stem.0.weight"] == (192, 3, 4, 4)
    assert shapes["stem.1.weight"] == (192,)
    assert shapes["stages.2.blocks.26.conv_dw.weight"] == (768, 1, 7, 7)
    assert shapes["stages.3.blocks.2.mlp.fc1.weight"] == (6144, 1536)
    assert shapes["stages.3.blocks.2.gamma"] == (1536,)
    assert shapes["stages.1.downsample.1.weight"] == (384, 192, 2, 2)
    assert "stages.0.downsample.0.weight" not in shapes
    assert sum(1 for k in shapes if k.endswith("conv_dw.weight")) == 3 + 3 + 27 + 3


@torch.inference_mode()
def test_stage_shapes_and_block_maths():
    torch.manual_seed(0)
    trunk = ConvNeXtTrunk(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)).eval()
    for p in trunk.parameters():  # layer scale 1e-6 would hide the block; make it visible
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 3, 64, 64)
    outs = trunk(x)
    assert [tuple(o.shape) for o in outs] == [
        (2, 8, 16, 16),
        (2, 16, 8, 8),
        (2, 24, 4, 4),
        (2, 32, 2, 2),
    ]
    # Stem and first block written out with functional ops.
    stem = F.conv2d(x, trunk.stem[0].weight, trunk.stem[0].bias, stride=4)
    stem = F.layer_norm(
        stem.permute(0, 2, 3, 1), (8,), trunk.stem[1].weight, trunk.stem[1].bias, 1e-6
    )
    stem = stem.permute(0, 3, 1, 2)
    blk = trunk.stages[0].blocks[0]
    y = F.conv2d(stem, blk.conv_dw.weight, blk.conv_dw.bias, padding=3, groups=8).permute(
        0, 2, 3, 1
    )
    y = F.layer_norm(y, (8,), blk.norm.weight, blk.norm.bias, 1e-6)
    y = F.linear(
        F.gelu(F.linear(y, blk.mlp.fc1.weight, blk.mlp.fc1.bias)),
        blk.mlp.fc2.weight,
        blk.mlp.fc2.bias,
    )
    expected = stem + (y * blk.gamma).permute(0, 3, 1, 2)
    torch.testing.assert_close(outs[0], expected, rtol=1e-5, atol=1e-5)
