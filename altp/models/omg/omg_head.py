"""OMG-Seg's Mask2Former head as OMG-LLaVA uses it: panoptic queries and ``[SEG]`` masks.

Port of ``Mask2FormerVideoSemSamHead`` (``omg_llava/model/omg_seg/
mask2former_vid_semanticsam.py``: ``forward``, ``_forward_head``,
``_forward_head_llm``, ``forward_llm_seg``, ``forward_logit``) for single images,
with upstream attribute names so ``visual_encoder.panoptic_head.*`` keys load
after stripping that prefix. Two paths share the pixel decoder output:

* :meth:`OmgSegHead.panoptic`: 300 learned queries through ``transformer_decoder``
  and ``mask_embed``, classified against CLIP class embeddings; gives what the
  perception prior and the object tokens need.
* :meth:`OmgSegHead.decode_seg`: one query per ``[SEG]`` (``projector_text2vision``
  output split into feature and positional halves) through the LLM copies
  ``transformer_decoder_llm`` and ``mask_embed_llm`` over the *cached* pixel
  decoder features of its image.

Not ported (unused by GCG): the SAM-style prompt branches (``mask_tokens``,
``pb_embedding``, ``pos_linear``) and the losses; a checkpoint converter must
list their keys as known-unused rather than drop them silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from altp.models.omg.mask2former import Mask2FormerDecoder, sine_positional_encoding_3d
from altp.models.omg.pixel_decoder import MSDeformAttnPixelDecoder

__all__ = ["DecoderCache", "OmgSegHead", "PanopticOutput"]

LOGIT_SCALE = 4.6052  # upstream: log(1 / 0.01), a fixed buffer


def _mlp3(dims: int, out_dims: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dims, dims),
        nn.ReLU(),
        nn.Linear(dims, dims),
        nn.ReLU(),
        nn.Linear(dims, out_dims),
    )


@dataclass(frozen=True)
class DecoderCache:
    """Pixel-decoder outputs of a batch, kept for ``[SEG]`` decoding.

    Attributes:
        mask_features: ``(B, C, H_0, W_0)`` (256 x 256 for a 1024 input).
        keys: per decoder level (coarsest first) ``(B, hw_l, C)`` with ``level_embed`` added.
        key_pos: per level ``(1, hw_l, C)`` sine positional encodings.
        level_shapes: per level ``(h_l, w_l)``.
    """

    mask_features: Tensor
    keys: tuple[Tensor, ...]
    key_pos: tuple[Tensor, ...]
    level_shapes: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PanopticOutput:
    """Last-layer panoptic predictions.

    Attributes:
        mask_cls: ``(B, Q, K + 1)`` class logits, background last.
        mask_pred: ``(B, Q, H_0, W_0)`` mask logits at mask-feature resolution.
        queries: ``(B, Q, 2C)``: last decoder output *before* ``post_norm``
            concatenated with ``query_embed`` (upstream ``query_pos_feat``).
        cache: features reused by :meth:`OmgSegHead.decode_seg`.
    """

    mask_cls: Tensor
    mask_pred: Tensor
    queries: Tensor
    cache: DecoderCache


class OmgSegHead(nn.Module):
    """Args:
    class_embed: ``(K, P, D)`` L2-normalised CLIP text embeddings of the K
        classes (the ``convnext_large_d_320_CocoPanopticOVDataset.pth`` file);
        a zero background row is appended as upstream does.
    in_channels, feat_channels, num_queries, num_levels, num_layers, num_heads,
    feedforward_channels: OMG-Seg defaults (ConvNeXt-L, 256, 300, 3, 9, 8, 2048).
    """

    cls_embed: Tensor  # (D, K + 1, P) buffer registered in __init__

    def __init__(
        self,
        *,
        class_embed: Tensor,
        in_channels: tuple[int, ...] = (192, 384, 768, 1536),
        feat_channels: int = 256,
        num_queries: int = 300,
        num_levels: int = 3,
        num_layers: int = 9,
        num_heads: int = 8,
        feedforward_channels: int = 2048,
        pixel_decoder: MSDeformAttnPixelDecoder | None = None,
    ) -> None:
        super().__init__()
        if class_embed.ndim != 3:
            raise ValueError(f"class_embed must be (K, P, D), got {tuple(class_embed.shape)}")
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.pixel_decoder = pixel_decoder or MSDeformAttnPixelDecoder(
            in_channels=in_channels,
            feat_channels=feat_channels,
            out_channels=feat_channels,
            num_encoder_levels=num_levels,
        )

        def decoder() -> Mask2FormerDecoder:
            return Mask2FormerDecoder(
                num_layers=num_layers,
                embed_dims=feat_channels,
                num_heads=num_heads,
                feedforward_channels=feedforward_channels,
            )

        self.transformer_decoder = decoder()
        self.transformer_decoder_llm = decoder()
        self.query_embed = nn.Embedding(num_queries, feat_channels)
        self.query_feat = nn.Embedding(num_queries, feat_channels)
        self.level_embed = nn.Embedding(num_levels, feat_channels)
        self.mask_embed = _mlp3(feat_channels, feat_channels)
        self.mask_embed_llm = _mlp3(feat_channels, feat_channels)
        self.iou_embed = _mlp3(feat_channels, 1)  # in the checkpoint; predict() drops its column
        self.cls_proj = _mlp3(feat_channels, class_embed.shape[-1])
        self.mask_pooling_proj = nn.Sequential(
            nn.LayerNorm(feat_channels), nn.Linear(feat_channels, feat_channels)
        )
        background = torch.zeros(
            1, class_embed.shape[1], class_embed.shape[2], dtype=class_embed.dtype
        )
        full = torch.cat([class_embed, background], dim=0)  # (K + 1, P, D)
        self.register_buffer("cls_embed", full.permute(2, 0, 1).contiguous(), persistent=False)

    def _cache(self, feats: list[Tensor] | tuple[Tensor, ...]) -> DecoderCache:
        mask_features, memories = self.pixel_decoder(feats)
        keys, pos, shapes = [], [], []
        for i, mem in enumerate(memories):
            h, w = mem.shape[-2:]
            keys.append(mem.flatten(2).transpose(1, 2) + self.level_embed.weight[i].view(1, 1, -1))
            no_padding = torch.zeros(1, 1, h, w, dtype=torch.bool, device=mem.device)
            p = sine_positional_encoding_3d(
                no_padding, num_feats=mem.shape[1] // 2
            )  # (1, 1, C, h, w)
            pos.append(p.transpose(1, 2).flatten(2).transpose(1, 2).to(mem.dtype))
            shapes.append((int(h), int(w)))
        return DecoderCache(mask_features, tuple(keys), tuple(pos), tuple(shapes))

    def _mask_and_attn(
        self, out: Tensor, mask_features: Tensor, target: tuple[int, int], *, llm: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        decoder = self.transformer_decoder_llm if llm else self.transformer_decoder
        normed = decoder.post_norm(out)
        embed = (self.mask_embed_llm if llm else self.mask_embed)(normed)
        mask_pred = torch.einsum("bqc,bchw->bqhw", embed, mask_features)
        attn = F.interpolate(mask_pred, size=target, mode="bilinear", align_corners=False)
        attn = attn.flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
        return normed, mask_pred, attn.sigmoid() < 0.5  # True = may not attend

    def _classify(self, normed: Tensor, mask_pred: Tensor, mask_features: Tensor) -> Tensor:
        # mask_pool (omg_seg/utils.py): mean of features over pixels whose logit > 0.
        binary = (mask_pred > 0).to(mask_features.dtype)
        pooled = torch.einsum(
            "bchw,bqhw->bqc", mask_features, binary / (binary.sum((-1, -2), keepdim=True) + 1e-8)
        )
        cls = self.cls_proj(self.mask_pooling_proj(pooled) + normed)
        sims = torch.einsum("bnc,ckp->bnkp", F.normalize(cls, dim=-1), self.cls_embed.to(cls.dtype))
        return sims.max(-1).values * torch.exp(torch.tensor(LOGIT_SCALE, dtype=cls.dtype))

    def _run(
        self,
        query: Tensor,
        query_pos: Tensor,
        cache: DecoderCache,
        index: Tensor | None,
        *,
        llm: bool,
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        mask_features = cache.mask_features if index is None else cache.mask_features[index]
        keys = cache.keys if index is None else tuple(k[index] for k in cache.keys)
        layers = (self.transformer_decoder_llm if llm else self.transformer_decoder).layers
        normed, mask_pred, attn = self._mask_and_attn(
            query, mask_features, cache.level_shapes[0], llm=llm
        )
        preds = [mask_pred]
        for i, layer in enumerate(layers):
            level = i % self.num_levels
            attn[attn.all(-1)] = False  # a fully masked row would attend nowhere: unmask it
            query = layer(
                query,
                key=keys[level],
                query_pos=query_pos,
                key_pos=cache.key_pos[level],
                cross_attn_mask=attn,
            )
            target = cache.level_shapes[(i + 1) % self.num_levels]
            normed, mask_pred, attn = self._mask_and_attn(query, mask_features, target, llm=llm)
            preds.append(mask_pred)
        return query, preds, normed

    def panoptic(self, feats: list[Tensor] | tuple[Tensor, ...]) -> PanopticOutput:
        """Run the panoptic decoder on backbone stages ``feats`` (finest first)."""
        cache = self._cache(feats)
        B = cache.mask_features.shape[0]
        query = self.query_feat.weight.unsqueeze(0).expand(B, -1, -1)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(B, -1, -1)
        query, preds, normed = self._run(query, query_pos, cache, None, llm=False)
        mask_cls = self._classify(normed, preds[-1], cache.mask_features)
        return PanopticOutput(mask_cls, preds[-1], torch.cat([query, query_pos], dim=-1), cache)

    def decode_seg(
        self, seg_queries: Tensor, cache: DecoderCache, image_index: Tensor
    ) -> list[Tensor]:
        """Masks for ``[SEG]`` queries.

        Args:
            seg_queries: ``(N, 2C)`` ``projector_text2vision`` outputs; the first
                ``C`` channels are the query, the rest its positional embedding.
            cache: :attr:`PanopticOutput.cache` of the batch.
            image_index: ``(N,)`` long, which image of the batch each query belongs to.

        Returns:
            ``1 + num_layers`` mask logits ``(N, 1, H_0, W_0)``; upstream uses the last.
        """
        if seg_queries.ndim != 2 or seg_queries.shape[0] != image_index.shape[0]:
            raise ValueError(
                f"seg_queries must be (N, 2C) with one image index each, got {tuple(seg_queries.shape)} "
                f"and {tuple(image_index.shape)}"
            )
        c = seg_queries.shape[1] // 2
        x = seg_queries.unsqueeze(1)  # (N, 1, 2C): one query per [SEG]
        _, preds, _ = self._run(x[..., :c], x[..., c:], cache, image_index, llm=True)
        return preds
