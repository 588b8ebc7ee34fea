"""OMG-LLaVA's whole visual side in one module: image -> LLM tokens, ``[SEG]`` state -> mask.

Wires the parts the way ``OMGSegVisualEncoder.forward`` and ``OMG_LLaVA``
(``omg_llava/model/omg_seg/omg_seg_visual_encoder.py``, ``model/omg_llava.py``)
do: ConvNeXt stages -> (a) stage 4 pixel-shuffled to the token grid, (b) OMG-Seg
panoptic decoding -> perception prior and object queries -> projector. The pixel
decoder features are kept (:class:`~altp.models.omg.omg_head.DecoderCache`) so
``[SEG]`` states can be decoded after generation. Everything runs in float32
(upstream's visual dtype); the caller casts the tokens to the LLM dtype.

:data:`OMG_LLAVA_7B` gives the official sizes; :data:`OMG_LLAVA_TINY` a random
model that still produces the official 16 x 16 = 256 pixel tokens from a
1024 x 1024 input, for CPU tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from altp.models.omg.convnext import ConvNeXtTrunk
from altp.models.omg.omg_head import DecoderCache, OmgSegHead, PanopticOutput
from altp.models.omg.perception_prior import perception_prior
from altp.models.omg.pixel_decoder import MSDeformAttnPixelDecoder
from altp.models.omg.projector import (
    OmgLlavaProjector,
    ProjectedVisual,
    TextToVisionProjector,
    pixel_shuffle,
)

__all__ = [
    "OMG_LLAVA_7B",
    "OMG_LLAVA_TINY",
    "OmgLlavaVisual",
    "OmgVisualConfig",
    "VisualEncoding",
]


@dataclass(frozen=True)
class OmgVisualConfig:
    """Sizes of the visual side (defaults: the official 7B model)."""

    depths: tuple[int, ...] = (3, 3, 27, 3)  # ConvNeXt-L
    dims: tuple[int, ...] = (192, 384, 768, 1536)
    feat_channels: int = 256  # Mask2Former width
    num_queries: int = 300
    encoder_layers: int = 6  # deformable pixel-decoder layers
    encoder_ffn: int = 1024
    decoder_layers: int = 9
    decoder_ffn: int = 2048
    num_heads: int = 8
    num_groups: int = 32  # GroupNorm in the pixel decoder
    num_classes: int = 133  # COCO panoptic: 80 things + 53 stuff
    class_prototypes: int = 1
    class_dims: int = 768  # CLIP text embedding width of convnext_large_d_320
    llm_dims: int = 4096
    shuffle_ratio: int = 2


OMG_LLAVA_7B = OmgVisualConfig()
OMG_LLAVA_TINY = OmgVisualConfig(
    depths=(1, 1, 1, 1),
    dims=(8, 16, 24, 32),
    feat_channels=16,
    num_queries=12,
    encoder_layers=1,
    encoder_ffn=32,
    decoder_layers=3,
    decoder_ffn=32,
    num_heads=2,
    num_groups=4,
    num_classes=5,
    class_dims=8,
    llm_dims=64,
)


@dataclass(frozen=True)
class VisualEncoding:
    """``tokens``: the LLM inputs; ``panoptic``: decoder outputs incl. the ``[SEG]`` cache."""

    tokens: ProjectedVisual
    panoptic: PanopticOutput

    @staticmethod
    def concat(parts: list[VisualEncoding]) -> VisualEncoding:
        """The encoding of a batch from the encodings of its parts, in order.

        Batch-dim tensors are concatenated, ``object_tokens`` joined per image; the
        rest (the separator, the positional encodings, the level shapes) does not
        depend on the image and is taken from the first part.
        """
        first = parts[0]
        t, c = first.tokens, first.panoptic.cache
        tokens = ProjectedVisual(
            pixel_tokens=torch.cat([e.tokens.pixel_tokens for e in parts]), separator=t.separator,
            object_tokens=tuple(o for e in parts for o in e.tokens.object_tokens),
        )  # fmt: skip
        cache = DecoderCache(
            mask_features=torch.cat([e.panoptic.cache.mask_features for e in parts]),
            keys=tuple(torch.cat(level) for level in zip(*(e.panoptic.cache.keys for e in parts), strict=True)),
            key_pos=c.key_pos, level_shapes=c.level_shapes,
        )  # fmt: skip
        panoptic = PanopticOutput(
            mask_cls=torch.cat([e.panoptic.mask_cls for e in parts]),
            mask_pred=torch.cat([e.panoptic.mask_pred for e in parts]),
            queries=torch.cat([e.panoptic.queries for e in parts]), cache=cache,
        )  # fmt: skip
        return VisualEncoding(tokens=tokens, panoptic=panoptic)


class OmgLlavaVisual(nn.Module):
    """Backbone, OMG-Seg head, projector and ``projector_text2vision``.

    Args:
        config: sizes; the class embeddings are a buffer of zeros until loaded
            with :meth:`set_class_embed` (upstream reads them from a file).
    """

    def __init__(self, *, config: OmgVisualConfig = OMG_LLAVA_7B) -> None:
        super().__init__()
        c = config
        self.config = config
        self.backbone = ConvNeXtTrunk(depths=c.depths, dims=c.dims)
        pixel = MSDeformAttnPixelDecoder(
            in_channels=c.dims,
            feat_channels=c.feat_channels,
            out_channels=c.feat_channels,
            num_layers=c.encoder_layers,
            num_heads=c.num_heads,
            feedforward_channels=c.encoder_ffn,
            num_groups=c.num_groups,
        )
        self.head = OmgSegHead(
            class_embed=torch.zeros(c.num_classes, c.class_prototypes, c.class_dims),
            feat_channels=c.feat_channels,
            num_queries=c.num_queries,
            num_layers=c.decoder_layers,
            num_heads=c.num_heads,
            feedforward_channels=c.decoder_ffn,
            pixel_decoder=pixel,
        )
        query_dims = 2 * c.feat_channels
        self.projector = OmgLlavaProjector(
            pixel_dims=c.dims[-1] * c.shuffle_ratio**2, query_dims=query_dims, llm_dims=c.llm_dims
        )
        self.text2vision = TextToVisionProjector(llm_dims=c.llm_dims, query_dims=query_dims)

    def set_class_embed(self, class_embed: Tensor) -> None:
        """Install ``(K, P, D)`` L2-normalised class embeddings (background appended here)."""
        c = self.config
        if tuple(class_embed.shape) != (c.num_classes, c.class_prototypes, c.class_dims):
            raise ValueError(
                f"class embeddings must be {(c.num_classes, c.class_prototypes, c.class_dims)}, "
                f"got {tuple(class_embed.shape)}"
            )
        norms = class_embed.norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise ValueError("class embeddings must be L2-normalised (upstream asserts it)")
        background = torch.zeros_like(class_embed[:1])
        full = torch.cat([class_embed, background]).permute(2, 0, 1).contiguous()
        self.head.cls_embed = full.to(self.head.cls_embed.device)

    def encode(self, pixel_values: Tensor) -> VisualEncoding:
        """``pixel_values (B, 3, S, S)`` normalised -> LLM tokens and the decoder cache.

        For ``S = 1024``: 256 pixel tokens (16 x 16 grid, row-major), the
        separator and one object token per query that wins a cell.
        """
        feats = self.backbone(pixel_values.float())
        clip = pixel_shuffle(feats[-1], ratio=self.config.shuffle_ratio)  # (B, C', h, w)
        grid = (int(clip.shape[-2]), int(clip.shape[-1]))
        panoptic = self.head.panoptic(feats)
        prior, attn = perception_prior(
            panoptic.mask_cls,
            panoptic.mask_pred,
            panoptic.queries,
            image_size=(int(pixel_values.shape[-2]), int(pixel_values.shape[-1])),
            grid=grid,
        )
        pixel_features = torch.cat([clip.flatten(2).transpose(1, 2), prior], dim=-1)
        tokens = self.projector(pixel_features, panoptic.queries, attn)
        return VisualEncoding(tokens=tokens, panoptic=panoptic)

    def seg_masks(
        self, seg_hidden: Tensor, encoding: VisualEncoding, image_index: Tensor
    ) -> Tensor:
        """``[SEG]`` final-layer states ``(N, llm_dims)`` -> mask logits ``(N, 1, H_0, W_0)``
        (the last decoder layer's, as the GCG tool uses)."""
        queries = self.text2vision(seg_hidden.float())
        return self.head.decode_seg(queries, encoding.panoptic.cache, image_index)[-1]
