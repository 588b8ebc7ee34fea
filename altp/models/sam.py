"""GLaMM's grounding encoder: SAM built from transformers' SAM parts.

GLaMM feeds SAM one *sparse* prompt per ``[SEG]`` token: the LLM hidden state
projected to 256-d (``text_hidden_fcs``), with the "no mask" dense embedding and
no points or boxes (groundingLMM ``model/GLaMM.py``,
``_generate_and_postprocess_masks``). transformers' ``SamPromptEncoder`` has no
text input, so we skip its forward and hand the mask decoder the sparse
embedding directly; the prompt encoder is still built so every checkpoint key
has a home (and for the positional encoding it owns).

Preprocessing mirrors upstream ``eval/gcg/infer.py``: resize the longest side to
``image_size`` (PIL bilinear, as torchvision's ``resize`` on a PIL image),
normalise with SAM's pixel mean/std, zero-pad bottom/right to a square.
Post-processing mirrors ``Sam.postprocess_masks``: bilinear upsample of the
low-res logits to ``image_size``, crop the padding, bilinear resize to the
original size; the caller thresholds logits at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import SamConfig
from transformers.models.sam.modeling_sam import SamMaskDecoder, SamPromptEncoder, SamVisionEncoder

__all__ = ["SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "GroundingEncoder", "GroundingEncoderConfig", "resize_longest_side_shape"]

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class GroundingEncoderConfig:
    """SAM sizes. Defaults are SAM ViT-H as GLaMM builds it (``build_sam_vit_h``)."""

    image_size: int = 1024  # padded square input; GLaMM uses SAM's native 1024
    patch_size: int = 16
    hidden_size: int = 1280  # ViT-H width
    num_layers: int = 32
    num_heads: int = 16
    global_attn_indexes: tuple[int, ...] = (7, 15, 23, 31)
    window_size: int = 14
    prompt_dim: int = 256  # SAM's prompt / image-embedding width; text_hidden_fcs projects to it
    decoder_mlp_dim: int = 2048
    decoder_layers: int = 2
    decoder_heads: int = 8
    mask_in_chans: int = 16

    def to_hf(self) -> SamConfig:
        vision = dict(
            hidden_size=self.hidden_size, output_channels=self.prompt_dim, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, image_size=self.image_size, patch_size=self.patch_size,
            global_attn_indexes=list(self.global_attn_indexes), window_size=self.window_size,
            # segment-anything: PositionEmbeddingRandom(embed_dim // 2) with scale 1.0
            num_pos_feats=self.prompt_dim // 2, layer_norm_eps=1e-6,
        )
        prompt = dict(hidden_size=self.prompt_dim, image_size=self.image_size, patch_size=self.patch_size,
                      mask_input_channels=self.mask_in_chans)
        # segment-anything's TwoWayTransformer uses nn.LayerNorm's default eps (1e-5);
        # transformers' SAM config defaults to 1e-6.
        decoder = dict(hidden_size=self.prompt_dim, mlp_dim=self.decoder_mlp_dim, num_hidden_layers=self.decoder_layers,
                       num_attention_heads=self.decoder_heads, layer_norm_eps=1e-5)
        cfg = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
        # (SamConfig types its sub-configs as dict | config | None; after __init__ they are configs)
        cfg.vision_config.scale = 1.0  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]  PositionEmbeddingRandom(scale=None) -> 1.0
        # SamModel sets this for its decoder; we build the decoder alone. Eager is the
        # reference math and the decoder's attention is tiny (<= 7 tokens x h*w keys).
        cfg.mask_decoder_config._attn_implementation = "eager"  # pyright: ignore[reportAttributeAccessIssue, reportOptionalMemberAccess]
        return cfg


def resize_longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """(new_h, new_w) with the longest side == target (segment-anything ``get_preprocess_shape``)."""
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class GroundingEncoder(nn.Module):
    """SAM image encoder + prompt encoder + mask decoder, text-prompted.

    Args:
        config: the sizes.
    """

    def __init__(self, *, config: GroundingEncoderConfig) -> None:
        super().__init__()
        self.config = config
        hf = config.to_hf()
        self.image_encoder = SamVisionEncoder(hf.vision_config)  # pyright: ignore[reportArgumentType]  (as in to_hf)
        self.prompt_encoder = SamPromptEncoder(hf)
        self.mask_decoder = SamMaskDecoder(hf.mask_decoder_config)  # pyright: ignore[reportArgumentType]  (as in to_hf)

    def resize(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (h, w, 3) uint8, its longest side resized to S (bilinear): SAM's pixels before
        normalising and padding (what a DataLoader worker sends: a quarter of the float32 bytes)."""
        s = self.config.image_size
        h, w = resize_longest_side_shape(image.height, image.width, s)
        return np.asarray(image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)).copy()

    def normalise(self, pixels: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
        """(h, w, 3) uint8 from :meth:`resize` -> (1, 3, S, S) float32 normalised and padded, on ``device``."""
        s = self.config.image_size
        h, w = pixels.shape[:2]
        x = torch.from_numpy(pixels).to(device).permute(2, 0, 1).float()  # (3, h, w)
        mean = torch.tensor(SAM_PIXEL_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(SAM_PIXEL_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
        x = (x - mean) / std  # fp32 (upstream normalises before casting to bf16)
        x = F.pad(x, (0, s - w, 0, s - h))  # pad right and bottom with zeros (after normalising)
        return x.unsqueeze(0)

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """RGB image -> ((1, 3, S, S) float32 normalised and padded, (h, w) before padding)."""
        pixels = self.resize(image)
        return self.normalise(pixels), (pixels.shape[0], pixels.shape[1])

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) -> image embedding (1, C=prompt_dim, S/patch, S/patch)."""
        return self.image_encoder(pixels).last_hidden_state

    def _dense_pe(self, size: int, like: torch.Tensor) -> torch.Tensor:
        """(1, C, size, size) positional encoding of the embedding grid (``get_dense_pe``)."""
        pe_layer = self.prompt_encoder.shared_embedding
        grid = torch.ones((size, size), device=like.device, dtype=pe_layer.positional_embedding.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / size
        x = (grid.cumsum(dim=1) - 0.5) / size
        pe = pe_layer(torch.stack([x, y], dim=-1))  # (size, size, C)
        return pe.permute(2, 0, 1).unsqueeze(0).to(like.dtype)

    def decode(self, image_embedding: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits, one per text prompt.

        Args:
            image_embedding: (1, C, h, w) from :meth:`encode`.
            text_embeds: (N, C) projected ``[SEG]`` states, one sparse prompt each.

        Returns:
            (N, 4h, 4w) logits (multimask off: the first mask token's output).
        """
        n = text_embeds.shape[0]
        if n == 0:
            h, w = image_embedding.shape[-2:]
            return image_embedding.new_zeros((0, 4 * h, 4 * w))
        c, h, w = image_embedding.shape[1:]
        sparse = text_embeds.to(image_embedding.dtype).view(1, n, 1, c)  # (B=1, point_batch=N, 1 token, C)
        dense = self.prompt_encoder.no_mask_embed.weight.view(1, c, 1, 1).expand(1, c, h, w).to(image_embedding.dtype)
        masks, _ = self.mask_decoder(
            image_embeddings=image_embedding,
            image_positional_embeddings=self._dense_pe(h, image_embedding),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )  # (1, N, 1, 4h, 4w)
        return masks[0, :, 0]

    def postprocess(self, low_res: torch.Tensor, *, input_hw: tuple[int, int], original_hw: tuple[int, int]) -> torch.Tensor:
        """(N, h', w') logits -> (N, H, W) float32 logits at the original size.

        Upsample to the padded square, crop to ``input_hw`` (the resized image
        before padding), resize to ``original_hw``; bilinear, align_corners=False.
        """
        return postprocess_masks(low_res, image_size=self.config.image_size, input_hw=input_hw, original_hw=original_hw)


def postprocess_masks(
    low_res: torch.Tensor, *, image_size: int, input_hw: tuple[int, int], original_hw: tuple[int, int]
) -> torch.Tensor:
    """Upstream ``Sam.postprocess_masks`` on (N, h', w') logits; returns (N, H, W) float32."""
    x = low_res.float().unsqueeze(1)  # (N, 1, h', w')
    x = F.interpolate(x, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    x = F.interpolate(x, tuple(original_hw), mode="bilinear", align_corners=False)
    return x[:, 0]
