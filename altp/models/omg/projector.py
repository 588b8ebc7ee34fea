"""OMG-LLaVA's visual projector, pixel shuffle and ``projector_text2vision``.

Ports of ``omg_llava/model/modules/projector/modeling_projector.py``
(``Naive_Proj``, wrapped as ``ProjectorModel_OMG_LLaVA.model``), xtuner's
``ProjectorModel`` (used for ``projector_text2vision``) and
``OMGSegVisualEncoder.pixel_shuffle_feat``. Attribute names follow upstream so
the checkpoint's ``projector.model.*`` and ``projector_text2vision.*`` tensors
load after stripping those prefixes (``seperate_embed`` is upstream's spelling).

Shapes for the 7B model (``C_llm = 4096``):

* ConvNeXt-L stage 4: ``(B, 1536, 32, 32)`` -> pixel shuffle (ratio 2) ->
  ``(B, 6144, 16, 16)`` -> flattened row-major ``(B, 256, 6144)``.
* Perception prior per cell: ``(B, 256, 512)`` (query feature 256 + query
  positional embedding 256, see :mod:`altp.models.omg.perception_prior`).
* ``model_feat``: ``Linear(6144 + 512, 4096), GELU, Linear(4096, 4096)`` on the
  concatenation -> 256 pixel tokens.
* ``query_proj: Linear(512, 6144)`` then ``model``: ``Linear(6144, 4096), GELU,
  Linear(4096, 4096)`` on the 300 decoder queries; only the *valid* ones (those
  that win at least one of the 256 cells) become object tokens.
* LLM input for image ``b``: ``[256 pixel tokens, seperate_embed, N_b object tokens]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["OmgLlavaProjector", "ProjectedVisual", "TextToVisionProjector", "pixel_shuffle"]


def pixel_shuffle(feat: Tensor, *, ratio: int = 2) -> Tensor:
    """Space-to-depth as ``OMGSegVisualEncoder.pixel_shuffle_feat``.

    ``(B, C, H, W) -> (B, ratio * ratio * C, H / ratio, W / ratio)`` with output
    channel ``(i * ratio + j) * C + c`` holding input ``[c, y * ratio + i, x * ratio + j]``
    (row offset ``i`` major, then column offset ``j``, then channel).
    """
    b, c, h, w = feat.shape
    if h % ratio or w % ratio:
        raise ValueError(f"feature map {h}x{w} is not divisible by the pixel-shuffle ratio {ratio}")
    x = feat.reshape(b, c, h // ratio, ratio, w // ratio, ratio)
    x = x.permute(0, 3, 5, 1, 2, 4)  # (B, i, j, C, H/r, W/r)
    return x.reshape(b, ratio * ratio * c, h // ratio, w // ratio)


def _mlp(in_dims: int, out_dims: int) -> nn.Sequential:
    # xtuner's depth-2 projector: Linear, GELU (exact erf, ACT2FN["gelu"]), Linear.
    return nn.Sequential(nn.Linear(in_dims, out_dims), nn.GELU(), nn.Linear(out_dims, out_dims))


@dataclass(frozen=True)
class ProjectedVisual:
    """Projected visual tokens of a batch.

    Attributes:
        pixel_tokens: ``(B, HW, C_llm)``, row-major over the ``16 x 16`` grid;
            the span the pruners act on.
        separator: ``(C_llm,)``, the learned ``seperate_embed`` row.
        object_tokens: one ``(N_b, C_llm)`` tensor per image, valid queries in
            query order.
    """

    pixel_tokens: Tensor
    separator: Tensor
    object_tokens: tuple[Tensor, ...]

    def sequence(self, index: int) -> Tensor:
        """Upstream's per-image visual sequence ``(HW + 1 + N_b, C_llm)``."""
        return torch.cat(
            [self.pixel_tokens[index], self.separator[None], self.object_tokens[index]], dim=0
        )


class OmgLlavaProjector(nn.Module):
    """``Naive_Proj`` with OMG-LLaVA's GCG settings (no visual-prompt or cross-attn branch).

    Args:
        pixel_dims: channels of the shuffled CLIP feature (6144 = 4 * 1536).
        query_dims: channels of a decoder query incl. its positional embedding (512).
        llm_dims: LLM hidden size (4096).
    """

    def __init__(
        self, *, pixel_dims: int = 6144, query_dims: int = 512, llm_dims: int = 4096
    ) -> None:
        super().__init__()
        self.pixel_dims = pixel_dims
        self.query_dims = query_dims
        self.query_proj = nn.Linear(query_dims, pixel_dims)
        self.model = _mlp(pixel_dims, llm_dims)
        self.model_feat = _mlp(pixel_dims + query_dims, llm_dims)
        self.seperate_embed = nn.Embedding(1, llm_dims)

    def forward(
        self, pixel_features: Tensor, queries: Tensor, attn_mask: Tensor
    ) -> ProjectedVisual:
        """Project pixel cells and valid object queries into the LLM space.

        Args:
            pixel_features: ``(B, HW, pixel_dims + query_dims)``: shuffled CLIP
                feature concatenated with the per-cell perception prior.
            queries: ``(B, Q, query_dims)``: final decoder queries ``cat(feat, pos)``.
            attn_mask: ``(B, Q, HW)`` bool, True where query ``q`` does *not* win
                cell ``hw``; a query is valid iff some entry of its row is False
                (upstream ``attention_mask.sum(-1) < HW``).
        """
        expected = self.pixel_dims + self.query_dims
        if pixel_features.shape[-1] != expected:
            raise ValueError(
                f"pixel_features must have {expected} channels (shuffled CLIP + prior), got {pixel_features.shape[-1]}"
            )
        if attn_mask.dtype != torch.bool or attn_mask.shape[:2] != queries.shape[:2]:
            raise ValueError(
                f"attn_mask must be bool (B, Q, HW) matching queries {tuple(queries.shape[:2])}, "
                f"got {attn_mask.dtype} {tuple(attn_mask.shape)}"
            )
        valid = attn_mask.sum(-1) < attn_mask.shape[-1]  # (B, Q)
        objects = self.model(self.query_proj(queries))  # (B, Q, C_llm)
        pixels = self.model_feat(pixel_features)  # (B, HW, C_llm)
        return ProjectedVisual(
            pixel_tokens=pixels,
            separator=self.seperate_embed.weight[0],
            object_tokens=tuple(objects[b][valid[b]] for b in range(objects.shape[0])),
        )


class TextToVisionProjector(nn.Module):
    """``projector_text2vision``: ``[SEG]`` hidden state -> OMG decoder query.

    ``Linear(llm_dims, 512), GELU, Linear(512, 512)``; the output's first half is
    the query feature, the second half its positional embedding
    (``Mask2FormerVideoSemSamHead.forward_llm_seg``).
    """

    def __init__(self, *, llm_dims: int = 4096, query_dims: int = 512) -> None:
        super().__init__()
        self.model = _mlp(llm_dims, query_dims)

    def forward(self, hidden: Tensor) -> Tensor:
        """``(N, llm_dims) -> (N, query_dims)``."""
        return self.model(hidden)
