"""GLaMM (groundingLMM) on stock transformers, with pruning through the engine.

Parts, named after upstream's checkpoint prefixes (``model/GLaMM.py``,
``model/llava/``):

* ``vision_tower``: CLIP ViT-L/14-336; features of layer -2, patch tokens only
  (CLS dropped) -> 24x24 = 576 visual tokens.
* ``mm_projector``: Linear(1024, 4096), GELU, Linear(4096, 4096).
* ``llm``: LlamaForCausalLM (Vicuna-7B shapes).
* ``grounding_encoder``: SAM ViT-H (:mod:`altp.models.sam`).
* ``text_hidden_fcs``: Linear(4096, 4096), ReLU, Linear(4096, 256).

GCG inference (``eval/gcg/infer.py``): the llava_v1 prompt with the image
features spliced in place of ``<image>`` between ``<im_start>`` and
``<im_end>``; greedy decoding; the final-layer (post-norm) hidden state of the
token *before* each ``[SEG]`` -- the state whose logits produced ``[SEG]`` --
goes through ``text_hidden_fcs`` into SAM as one sparse prompt. The engine
returns exactly those states as ``step_hidden``, so ``step_hidden[tokens == seg]``
needs no position offset, pruned or not (upstream hard-codes 575, which breaks
as soon as tokens are dropped). The timed pipeline around the engine is
:func:`altp.models.generate.generate_and_decode`, shared with OMG-LLaVA.

Build a GLaMM by name (official, shapes, tiny, full-size random) with
:mod:`altp.models.glamm_build`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from altp.flops import LLMShape
from altp.models.base import (
    GCGModel,
    GCGPrediction,
    ImageInputs,
    restore_rope_fp32,
    rope_fp32_masters,
)
from altp.models.generate import Decoded, GCGSteps, StepsAdapter
from altp.models.patch_grid import rect_area_fractions
from altp.models.pixels import check_resizes, clip_geometry, clip_resize_crop
from altp.models.sam import GroundingEncoder, GroundingEncoderConfig, resize_longest_side_shape
from altp.models.tokenizer import (
    GLAMM_ADDED_TOKENS,
    GLaMMTokenIds,
    gcg_prompt,
    parse_gcg_output,
    tokenize_with_image,
)
from altp.pruning._rowwise import encode_per_sample
from altp.pruning.base import VISION_SIGNALS, VisionSignals

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    from altp.pruning.base import Pruner

__all__ = ["CLIP_MEAN", "CLIP_STD", "GLaMM", "GLaMMConfig", "clip_resize_crop", "config_from_dict", "config_to_dict"]

# openai/clip-vit-large-patch14-336 preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class GLaMMConfig:
    """Sizes of every part; the defaults are the released GLaMM-GCG.

    ``clip`` and ``llm`` are keyword arguments of ``CLIPVisionConfig`` and
    ``LlamaConfig`` so the same code builds the 7B model (from the checkpoint's
    own config files) and a tiny random one.
    """

    clip: dict[str, Any] = field(default_factory=lambda: dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5))
    llm: dict[str, Any] = field(default_factory=lambda: dict(
        vocab_size=32007, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False))
    sam: GroundingEncoderConfig = field(default_factory=GroundingEncoderConfig)
    select_layer: int = -2  # mm_vision_select_layer: the penultimate CLIP layer
    out_dim: int = 256  # text_hidden_fcs output = SAM prompt width


def config_to_dict(config: GLaMMConfig) -> dict[str, Any]:
    """JSON-ready sizes (the ``config.json`` written next to trained weights)."""
    d = asdict(config)
    d["sam"]["global_attn_indexes"] = list(d["sam"]["global_attn_indexes"])
    return d


def config_from_dict(d: dict[str, Any]) -> GLaMMConfig:
    """Inverse of :func:`config_to_dict`."""
    sam = dict(d["sam"])
    sam["global_attn_indexes"] = tuple(sam["global_attn_indexes"])
    return GLaMMConfig(clip=dict(d["clip"]), llm=dict(d["llm"]), sam=GroundingEncoderConfig(**sam),
                       select_layer=int(d["select_layer"]), out_dim=int(d["out_dim"]))


class GLaMM(nn.Module, StepsAdapter, GCGModel):
    """GLaMM for grounded conversation generation; implements :class:`altp.models.base.GCGModel`.

    Args:
        config: part sizes.
        tokenizer: a tokenizer carrying GLaMM's added tokens.
        token_ids: its checked ids (:func:`altp.models.tokenizer.load_glamm_tokenizer`).
        name: label recorded in run files.
        max_new_tokens: default generation length (upstream: 512).
    """

    def __init__(
        self,
        *,
        config: GLaMMConfig,
        tokenizer: PreTrainedTokenizerBase,
        token_ids: GLaMMTokenIds,
        name: str = "glamm",
        max_new_tokens: int = 512,
    ) -> None:
        super().__init__()
        self.config = config
        self.name = name
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.max_new_tokens = int(max_new_tokens)
        clip_cfg = CLIPVisionConfig(**config.clip)
        llm_cfg = LlamaConfig(**config.llm)
        rows_needed = token_ids.base_vocab + len(GLAMM_ADDED_TOKENS)  # one embedding row per added token
        if rows_needed > llm_cfg.vocab_size:
            raise ValueError(
                f"tokenizer ids reach {rows_needed} but the LLM has {llm_cfg.vocab_size} embedding rows; "
                "use the tokenizer files that came with the checkpoint (tokenizer_dir=null)"
            )
        self.vision_tower = CLIPVisionModel(clip_cfg)
        d, c = llm_cfg.hidden_size, clip_cfg.hidden_size
        self.mm_projector = nn.Sequential(nn.Linear(c, d), nn.GELU(), nn.Linear(d, d))
        self.llm = LlamaForCausalLM(llm_cfg)
        self.grounding_encoder = GroundingEncoder(config=config.sam)
        self.text_hidden_fcs = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, config.out_dim))

        # CLIPVisionConfig types its sizes as int | list | tuple; GLaMM's CLIP input and patches are square
        self.clip_size, patch = cast(int, clip_cfg.image_size), cast(int, clip_cfg.patch_size)
        side = self.clip_size // patch
        self.grid: tuple[int, int] = (side, side)
        self.num_visual = side * side
        self.vision_signals: frozenset[str] = frozenset(VISION_SIGNALS)  # CLIP ViT: CLS token, attention
        self.llm_shape = LLMShape(hidden_size=d, intermediate_size=llm_cfg.intermediate_size,
                                  num_layers=llm_cfg.num_hidden_layers)
        self.prompt = gcg_prompt()
        self.prefix_ids, self.suffix_ids = tokenize_with_image(self.prompt, tokenizer)
        self.num_text_tokens = len(self.prefix_ids) + len(self.suffix_ids)
        self._rope_fp32 = rope_fp32_masters(self)  # RoPE stays fp32 under .to(bfloat16)

    def _apply(self, fn: Any, recurse: bool = True) -> GLaMM:
        super()._apply(fn, recurse)
        restore_rope_fp32(self, self._rope_fp32)
        return self

    # -- properties the runner reads ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mm_projector[0].weight.device  # pyright: ignore[reportReturnType]  (Sequential[i] is typed Module)

    @property
    def dtype(self) -> torch.dtype:
        return self.mm_projector[0].weight.dtype  # pyright: ignore[reportReturnType]  (Sequential[i] is typed Module)

    # -- stages --------------------------------------------------------------------------------
    def vision_image(self, image: Image.Image) -> np.ndarray:
        """(336, 336, 3) uint8: the pixels CLIP sees (after resize + crop, before normalising)."""
        return clip_resize_crop(image, self.clip_size)

    def token_grid_fraction(self, mask: np.ndarray) -> np.ndarray:
        """(rows, cols) float64: the fraction of each visual token's patch that ``mask`` covers.

        ``mask`` is (H, W) bool at the original image size. Token ``(r, c)`` sees the
        ``14 x 14`` px patch ``[14 r, 14 r + 14) x [14 c, 14 c + 14)`` of the 336 px centre
        crop; that square is mapped back through the crop offset and the shortest-side
        resize of :func:`clip_resize_crop` (:mod:`altp.models.patch_grid`). Parts of the
        image cut off by the crop belong to no token.
        """
        h, w = np.shape(mask)
        new_w, new_h, top, left = clip_geometry(w, h, self.clip_size)
        rows, cols = self.grid
        y = (top + np.arange(rows + 1) * (self.clip_size / rows)) * (h / new_h)
        x = (left + np.arange(cols + 1) * (self.clip_size / cols)) * (w / new_w)
        return rect_area_fractions(mask, y, x)

    def preprocess(self, image: Image.Image) -> ImageInputs:
        """CPU-only inputs of one image: CLIP's resize + crop and SAM's resize, uint8
        (``pixels["sam"]``; see :class:`altp.models.base.ImageInputs`).

        Raises:
            UnprocessableImageError: a resize that leaves a side of zero pixels (or one too large to hold).
        """
        sam_h, sam_w = resize_longest_side_shape(image.height, image.width,
                                                  self.grounding_encoder.config.image_size)
        clip_w, clip_h, _, _ = clip_geometry(image.width, image.height, self.clip_size)
        check_resizes(image.width, image.height, {"CLIP's resize": (clip_w, clip_h), "SAM's resize": (sam_w, sam_h)})
        image = image.convert("RGB")
        return ImageInputs(vision_image=self.vision_image(image), size=(image.height, image.width),
                           pixels={"sam": self.grounding_encoder.resize(image)})

    def clip_input(self, inputs: Sequence[ImageInputs]) -> torch.Tensor:
        """(B, 3, 336, 336) CLIP input of preprocessed images, normalised on the model's device, in its dtype."""
        x = torch.stack([torch.from_numpy(i.vision_image) for i in inputs]).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
        return ((x / 255.0 - mean) / std).to(self.dtype)  # fp32 like CLIPImageProcessor, cast afterwards like upstream

    def clip_pixels(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, S, S) normalised CLIP input in the model's dtype."""
        return self.clip_input([self.preprocess(image)])

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> projected visual tokens (B, V, D), row-major over the grid."""
        return self.encode_with_signals(pixels, frozenset())[0]

    def encode_with_signals(
        self, pixels: torch.Tensor, wanted: frozenset[str]
    ) -> tuple[torch.Tensor, VisionSignals | None]:
        """(B, 3, S, S) -> projected visual tokens (B, V, D) and the ``wanted`` vision signals.

        The signals come from the feature layer (``select_layer``, the penultimate CLIP
        layer): its patch outputs before the projector, its attention keys
        ``k_proj(layer_norm1(x))`` averaged over heads, and the CLS token's attention row
        (softmax per head over all 1 + V tokens, summed over heads, CLS column dropped),
        recomputed from that layer's own q/k so CLIP keeps its SDPA kernel (as
        upstream VisionZip reads ``attentions[-2]`` and the layer's keys). None when
        nothing is wanted.
        """
        out = self.vision_tower(pixel_values=pixels, output_hidden_states=True)
        states = out.hidden_states  # embeddings, then one entry per CLIP layer
        k = self.config.select_layer % len(states)  # states[k] is the output of CLIP layer k - 1
        feats = states[k][:, 1:]  # drop CLS: (B, V, C)
        visual = self.mm_projector(feats)
        if not wanted:
            return visual, None
        tower = getattr(self.vision_tower, "vision_model", self.vision_tower)  # transformers 5 flattens it
        layer = cast("CLIPEncoderLayer", tower.encoder.layers[k - 1])  # ModuleList items are typed Module
        attn = layer.self_attn
        b, n, _ = states[k - 1].shape
        x = layer.layer_norm1(states[k - 1])  # the feature layer's attention input, CLS first
        keys = attn.k_proj(x).view(b, n, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, 1 + V, hd)
        cls_attention = None
        if "cls_attention" in wanted:
            q = attn.q_proj(x[:, :1]).view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, 1, hd)
            row = (torch.matmul(q.float(), keys.float().transpose(-1, -2)) * attn.scale).softmax(-1)  # (B, H, 1, 1+V)
            cls_attention = row[:, :, 0, 1:].sum(1)  # (B, V)
        signals = VisionSignals(
            cls_attention=cls_attention,
            features=feats if "features" in wanted else None,
            keys=keys.mean(1)[:, 1:] if "keys" in wanted else None,  # (B, V, hd)
            project=lambda f: encode_per_sample(self.mm_projector, f),
        )
        return visual, signals

    def build_inputs_embeds(self, visual: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings with ``visual`` (B, V, D) in place of ``<image>``: (B, L, D).

        Layout: ``[BOS ... <im_start>] [V visual] [<im_end> ... ASSISTANT:]``;
        the visual span starts at ``len(self.prefix_ids)``.
        """
        emb = self.llm.get_input_embeddings()
        ids = torch.tensor([self.prefix_ids + self.suffix_ids], device=self.device)
        text = emb(ids).expand(visual.shape[0], -1, -1)  # (B, L_text, D)
        k = len(self.prefix_ids)
        return torch.cat([text[:, :k], visual.to(text.dtype), text[:, k:]], dim=1)

    def masks_from_states(self, image: Image.Image, seg_states: torch.Tensor) -> list[np.ndarray]:
        """``[SEG]`` hidden states (N, D) -> N bool masks (H, W) at the image's size."""
        return self.batch_masks([self.preprocess(image)], [seg_states])[0]

    def batch_masks(self, inputs: Sequence[ImageInputs], seg_states: Sequence[torch.Tensor]) -> list[list[np.ndarray]]:
        """Per image, its ``[SEG]`` states (N_b, D) -> N_b bool masks (H, W) at that image's size.

        SAM's image encoder runs once over the images that have a state; the
        prompt decoder runs per image, on that image's N_b prompts, as at batch 1
        (a few rows per call: see :mod:`altp.pruning._rowwise` for why their
        count must not change).
        """
        out: list[list[np.ndarray]] = [[] for _ in inputs]
        todo = [b for b, s in enumerate(seg_states) if s.shape[0]]
        if not todo:
            return out
        sam = self.grounding_encoder
        pixels = torch.cat([sam.normalise(inputs[b].pixels["sam"], self.device) for b in todo]).to(self.dtype)
        embeddings = encode_per_sample(sam.encode, pixels)  # (B', C, h, w)
        for i, b in enumerate(todo):
            text = self.text_hidden_fcs(seg_states[b].to(self.dtype))  # (N_b, 256)
            low_res = sam.decode(embeddings[i : i + 1], text)
            h, w = inputs[b].pixels["sam"].shape[:2]  # SAM's input before padding
            logits = sam.postprocess(low_res, input_hw=(h, w), original_hw=inputs[b].size)
            out[b] = [m.cpu().numpy() for m in logits > 0]
        return out

    def _encode_prompts(
        self, inputs: Sequence[ImageInputs], wanted: frozenset[str]
    ) -> tuple[torch.Tensor, VisionSignals | None]:
        """The batch's prompt embeddings (B, L, D) and, when ``wanted``, its vision signals (per image on the CPU)."""

        def join(parts: list[tuple[torch.Tensor, VisionSignals | None]]) -> tuple[torch.Tensor, VisionSignals | None]:
            signals = [s for _, s in parts if s is not None]
            return torch.cat([v for v, _ in parts]), VisionSignals.concat(signals) if signals else None

        visual, signals = encode_per_sample(lambda x: self.encode_with_signals(x, wanted), self.clip_input(inputs),
                                            join)  # fmt: skip
        return self.build_inputs_embeds(visual), signals

    # -- what StepsAdapter's predict_batch / predict_stream need ----------------------------------
    def gcg_steps(self, pruner: Pruner | None) -> GCGSteps[tuple[torch.Tensor, VisionSignals | None]]:
        """GLaMM's steps for :mod:`altp.models.generate`: the encoding is (prompt embeddings, vision signals)."""
        ids = self.token_ids
        wanted = pruner.needs_vision if pruner is not None else frozenset()
        return GCGSteps(
            lm=self.llm, device=self.device,
            # The prompts are built with the image encodings, so vision_ms covers both.
            encode=lambda inputs: self._encode_prompts(inputs, wanted),
            prompt=lambda encoded, b, _question: encoded[0][b : b + 1],
            vision=lambda encoded, group: encoded[1].rows(group) if encoded[1] is not None else None,
            seg_states=lambda hidden, tokens: hidden[tokens == ids.seg],  # the states that produced [SEG]
            masks=lambda inputs, _encoded, states: self.batch_masks(inputs, states),
            # decode() of one id sequence is a str (transformers types the batched form too)
            parse=lambda tokens: parse_gcg_output(self.tokenizer.decode(tokens, skip_special_tokens=False)),  # pyright: ignore[reportArgumentType]
            visual_start=len(self.prefix_ids), num_visual=self.num_visual, grid=self.grid, eos_token_id=ids.eos,
        )  # fmt: skip

    def decoded_prediction(self, decoded: Decoded[Any]) -> GCGPrediction:
        """The prediction of a decoded image (its text tokens: the prompt's, the same for every image)."""
        return decoded.prediction(num_text_tokens=self.num_text_tokens, num_visual=self.num_visual)
