"""OMG-LLaVA on stock transformers, with pruning through the engine.

Parts (ported in :mod:`altp.models.omg`, upstream facts in ``docs/omg_llava_port.md``):

* ``visual``: :class:`~altp.models.omg.visual.OmgLlavaVisual`, always float32 as
  upstream: ConvNeXt-L CLIP trunk, OMG-Seg head, projector, ``projector_text2vision``.
* ``llm``: InternLM2-chat converted to ``LlamaForCausalLM`` (LoRA merged), in
  the configured dtype.

GCG inference as upstream's tool (``omg_llava/tools/gcg_omg_seg_llava.py``):
the image is padded to a square with the mean colour and resized to 1024; the
prompt is ``[BOS] <|im_start|>user\\n`` + visual sequence +
``\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`` with the visual sequence
``[256 pixel tokens][separator][N object tokens]``. Only the 256 pixel tokens
are the engine's visual span (16 x 16 grid, budget ``floor(keep * 256)``); the
separator and object tokens follow it like text and are always kept. Greedy
decoding stops at ``<|im_end|>`` or ``</s>``. ``[SEG]`` masks come from the
state of the ``[SEG]`` token *itself* (it is the input there): the engine's
``step_hidden[t]`` is the state that produced ``tokens[t]``, i.e. the state at
the position of ``tokens[t - 1]``, so a ``[SEG]`` at ``t`` uses
``step_hidden[t + 1]`` and a final ``[SEG]`` has none (as upstream). When no
``[SEG]`` state comes out, the next of the six GCG questions is tried; after
the sixth the last answer stands (upstream's loop), in the pipeline shared with
GLaMM (:func:`altp.models.generate.generate_and_decode`).

Build an OMG-LLaVA by name (official, tiny) with :mod:`altp.models.omg_llava_build`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import LlamaForCausalLM

from altp.flops import LLMShape
from altp.models.base import (
    GCGModel,
    GCGPrediction,
    ImageInputs,
    restore_rope_fp32,
    rope_fp32_masters,
)
from altp.models.generate import Decoded, GCGSteps, StepsAdapter
from altp.models.omg.gcg_output import parse_gcg_text
from altp.models.omg.internlm2_chat import GCG_QUESTIONS
from altp.models.omg.preprocess import (
    IMAGE_MEAN,
    IMAGE_SIZE,
    IMAGE_STD,
    masks_to_original,
    seg_hidden_states,
)
from altp.models.omg.projector import ProjectedVisual
from altp.models.omg.tokenizer import OmgTokenIds, decode_answer, encode_gcg_prompt
from altp.models.omg.visual import OmgLlavaVisual, VisualEncoding
from altp.models.patch_grid import rect_area_fractions
from altp.models.pixels import check_resizes, omg_square_pixels
from altp.pruning._rowwise import encode_per_sample

if TYPE_CHECKING:  # pragma: no cover - typing only
    from altp.pruning.base import Pruner

__all__ = ["OmgLlava"]


class OmgLlava(nn.Module, StepsAdapter, GCGModel):
    """OMG-LLaVA for grounded conversation generation; implements :class:`altp.models.base.GCGModel`.

    Args:
        visual: the visual side (kept in float32).
        llm: the converted LLM; cast to ``llm_dtype`` here.
        tokenizer: InternLM2's tokenizer with OMG-LLaVA's added tokens.
        token_ids: its checked ids (:func:`altp.models.omg.tokenizer.load_internlm2_tokenizer`).
        llm_dtype: compute dtype of the LLM.
        name: label recorded in run files.
        max_new_tokens: default generation length (upstream: 100).
        llm_weights: one line for the run record saying what the LLM weights are.
    """

    def __init__(
        self,
        *,
        visual: OmgLlavaVisual,
        llm: LlamaForCausalLM,
        tokenizer: Any,
        token_ids: OmgTokenIds,
        llm_dtype: torch.dtype = torch.float32,
        name: str = "omg_llava",
        max_new_tokens: int = 100,
        llm_weights: str = "",
    ) -> None:
        super().__init__()
        cfg = llm.config
        if visual.config.llm_dims != cfg.hidden_size:
            raise ValueError(
                f"the projector writes {visual.config.llm_dims}-d tokens but the LLM is {cfg.hidden_size}-d"
            )
        top = max(token_ids.seg, token_ids.p_open, token_ids.p_close, token_ids.im_end)
        if top >= cfg.vocab_size:
            raise ValueError(
                f"tokenizer ids reach {top} but the LLM has {cfg.vocab_size} embedding rows; "
                "use the InternLM2 tokenizer of the checkpoint's LLM folder"
            )
        self.visual = visual.float()
        self.llm = llm
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self.name = name
        self.max_new_tokens = int(max_new_tokens)
        self.llm_weights = llm_weights
        side = IMAGE_SIZE // 64  # ConvNeXt stride 32, then pixel shuffle by 2
        self.grid: tuple[int, int] = (side, side)
        self.num_visual = side * side
        self.vision_signals: frozenset[str] = frozenset()  # ConvNeXt: no CLS token, no attention
        # The FLOPs ratio's decoder shape: InternLM2-7B's (MODEL_SHAPES["omg_llava"]) for the real model.
        self.llm_shape = LLMShape(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_layers=cfg.num_hidden_layers,
        )
        # The two prompt chunks around <image>, per question: BOS only before the first.
        prompts = [encode_gcg_prompt(tokenizer, q) for q in GCG_QUESTIONS]
        if any(p[0] != prompts[0][0] for p in prompts):
            raise ValueError("the GCG prompts must share the text before <image>")
        self.prefix_ids: list[int] = prompts[0][0]
        self.suffix_ids: list[list[int]] = [p[1] for p in prompts]
        self._rope_fp32 = rope_fp32_masters(self.llm)  # RoPE stays fp32 under a bf16 cast
        self.llm.to(llm_dtype)  # pyright: ignore[reportArgumentType]  (transformers' decorated .to confuses the checker)
        restore_rope_fp32(self.llm, self._rope_fp32)

    def _apply(self, fn: Any, recurse: bool = True) -> OmgLlava:
        super()._apply(fn, recurse)
        self.visual.float()  # upstream's visual path is float32 whatever the LLM runs in
        if hasattr(self, "_rope_fp32"):
            restore_rope_fp32(self.llm, self._rope_fp32)
        return self

    # -- properties the runner reads ---------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device  # pyright: ignore[reportReturnType]  (typed Module)

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype  # pyright: ignore[reportReturnType]  (typed Module)

    # -- stages --------------------------------------------------------------------------------
    def vision_image(self, image: Image.Image) -> np.ndarray:
        """(1024, 1024, 3) uint8: the mean-colour square padding, bicubic-resized, as OMG-Seg sees it."""
        return omg_square_pixels(image, IMAGE_SIZE)

    def token_grid_fraction(self, mask: np.ndarray) -> np.ndarray:
        """(16, 16) float64: the fraction of each pixel token's patch that ``mask`` covers.

        ``mask`` is (H, W) bool at the original image size. The image is padded to a
        ``S x S`` square (``S = max(H, W)``, original at offset ``(S - size) // 2``) and
        resized to 1024; pixel token ``(r, c)`` (ConvNeXt stride 32, then a 2x2 pixel
        shuffle) covers the ``64 x 64`` px patch ``[64 r, 64 r + 64) x [64 c, 64 c + 64)``,
        i.e. ``S / 16`` px of the square (:mod:`altp.models.patch_grid`). Padding counts
        as not covered, so a patch half in the padding is at most half covered.
        """
        h, w = np.shape(mask)
        side = max(h, w)
        rows, cols = self.grid
        y = np.arange(rows + 1) * (side / rows) - (side - h) // 2
        x = np.arange(cols + 1) * (side / cols) - (side - w) // 2
        return rect_area_fractions(mask, y, x)

    def preprocess(self, image: Image.Image) -> ImageInputs:
        """CPU-only inputs of one image: its mean-colour square at 1024 px, uint8 (``vision_image``).

        Raises:
            UnprocessableImageError: a square too large to hold (an aspect ratio beyond ~20000:1).
        """
        side = max(image.width, image.height)
        check_resizes(image.width, image.height, {"padding to a square": (side, side)})
        image = image.convert("RGB")
        return ImageInputs(vision_image=self.vision_image(image), size=(image.height, image.width))

    def pixel_input(self, inputs: Sequence[ImageInputs]) -> torch.Tensor:
        """(B, 3, 1024, 1024) float32 of preprocessed images on the model's device, normalised with
        upstream's truncated CLIP statistics."""
        x = torch.stack([torch.from_numpy(i.vision_image) for i in inputs]).to(self.device)
        x = x.permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(IMAGE_MEAN, device=x.device).view(3, 1, 1)
        std = torch.tensor(IMAGE_STD, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, 1024, 1024) float32 normalised with upstream's truncated CLIP statistics."""
        return self.pixel_input([self.preprocess(image)])

    def build_inputs_embeds(self, encoding: VisualEncoding, question: int = 0) -> torch.Tensor:
        """Prompt embeddings ``(1, L, D)``: prefix, 256 pixel tokens, separator, N objects, suffix.

        The pixel span starts at ``len(self.prefix_ids)``; everything after it is
        never pruned.
        """
        emb = self.llm.get_input_embeddings()
        ids = torch.tensor([self.prefix_ids + self.suffix_ids[question]], device=self.device)
        text = emb(ids)  # (1, L_text, D)
        visual = encoding.tokens.sequence(0)[None].to(text.dtype)  # (1, 256 + 1 + N, D)
        k = len(self.prefix_ids)
        return torch.cat([text[:, :k], visual, text[:, k:]], dim=1)

    def masks_from_states(
        self, image: Image.Image, encoding: VisualEncoding, seg_states: torch.Tensor
    ) -> list[np.ndarray]:
        """``[SEG]`` states (N, D) -> N bool masks (H, W) at the image's size (``encoding`` of it alone)."""
        return self.batch_masks([(image.height, image.width)], encoding, [seg_states])[0]

    def batch_masks(
        self, sizes: Sequence[tuple[int, int]], encoding: VisualEncoding, seg_states: Sequence[torch.Tensor]
    ) -> list[list[np.ndarray]]:
        """Per image b of ``encoding``'s batch, its ``[SEG]`` states (N_b, D) -> N_b bool masks at ``sizes[b]`` (H, W).

        The decoder runs per image, on that image's N_b queries against its
        row of the batch's cached pixel-decoder features, as at batch 1 (a few
        rows per call: see :mod:`altp.pruning._rowwise` for why their count
        must not change).
        """
        out: list[list[np.ndarray]] = []
        for b, (states, (h, w)) in enumerate(zip(seg_states, sizes, strict=True)):
            if states.shape[0] == 0:
                out.append([])
                continue
            index = torch.full((states.shape[0],), b, dtype=torch.long, device=states.device)
            logits = self.visual.seg_masks(states.float(), encoding, index)  # (N, 1, 256, 256)
            out.append([m.cpu().numpy() for m in masks_to_original(logits, original_size=(w, h))])
        return out

    @staticmethod
    def _sample(encoding: VisualEncoding, b: int) -> VisualEncoding:
        """Sample b's tokens as a batch of one (the panoptic output stays the batch's)."""
        t = encoding.tokens
        tokens = ProjectedVisual(pixel_tokens=t.pixel_tokens[b : b + 1], separator=t.separator,
                                 object_tokens=(t.object_tokens[b],))  # fmt: skip
        return VisualEncoding(tokens=tokens, panoptic=encoding.panoptic)

    # -- what StepsAdapter's predict_batch / predict_stream need ----------------------------------
    def gcg_steps(self, pruner: Pruner | None) -> GCGSteps[VisualEncoding]:
        """OMG-LLaVA's steps for :mod:`altp.models.generate`: upstream's six questions, in turn."""
        del pruner  # OMG-LLaVA's vision tower gives the pruners no signals
        ids = self.token_ids
        return GCGSteps(
            lm=self.llm, device=self.device,
            encode=lambda inputs: encode_per_sample(self.visual.encode, self.pixel_input(inputs), VisualEncoding.concat),
            prompt=lambda encoding, b, question: self.build_inputs_embeds(self._sample(encoding, b), question),
            num_questions=len(GCG_QUESTIONS),
            seg_states=lambda hidden, tokens: seg_hidden_states(hidden, tokens, seg_token_id=ids.seg),
            masks=lambda inputs, encoding, states: self.batch_masks([x.size for x in inputs], encoding, states),
            parse=lambda tokens: parse_gcg_text(decode_answer(self.tokenizer, tokens)),
            visual_start=len(self.prefix_ids), num_visual=self.num_visual, grid=self.grid,
            eos_token_id=list(ids.stop_ids),
        )  # fmt: skip

    def decoded_prediction(self, decoded: Decoded[VisualEncoding]) -> GCGPrediction:
        """The prediction of a decoded image.

        Each image tries upstream's questions until one gives a mask (max_new_tokens defaults to
        100, as upstream). The record's extras hold ``question`` (index into GCG_QUESTIONS of the
        answer kept), ``questions_tried``, ``object_tokens`` (N), ``separator_tokens`` (1) and
        ``llm_weights``; ``num_text_tokens`` counts the separator and the objects, since they are in
        every layer's sequence.
        """
        q = decoded.answer.question
        n_objects = int(decoded.encoding.tokens.object_tokens[decoded.index].shape[0])
        decoded.answer.record.extras[0].update(
            question=q, questions_tried=len(decoded.answers), object_tokens=n_objects, separator_tokens=1,
            llm_weights=self.llm_weights,
        )  # fmt: skip
        num_text = len(self.prefix_ids) + len(self.suffix_ids[q]) + 1 + n_objects  # + separator + objects
        return decoded.prediction(num_text_tokens=num_text, num_visual=self.num_visual)
