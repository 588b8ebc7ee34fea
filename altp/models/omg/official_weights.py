"""Load OMG-LLaVA's official state dicts into this port, and write them back (for tests).

:func:`load_official_visual` and :func:`llama_from_official` run the whole
strict mapping of ``docs/omg_llava_port.md`` section 9 on already-read state
dicts (file reading stays with the caller: the ``.pth`` files are pickles and
the caller decides how to trust them). :func:`write_official_layouts` is the
inverse used by tests: it writes a (tiny) model in every official layout,
including InternLM2's fused ``wqkv`` and a peft LoRA overlay whose merge gives
back the original weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import LlamaConfig

from altp.models.omg.internlm2_chat import llama_config_from_internlm2
from altp.models.omg.internlm2_convert import (
    OMG_LLAVA_LLM_PREFIX,
    ConversionError,
    convert_internlm2_to_llama,
    llama_to_internlm2,
)
from altp.models.omg.omg_checkpoint import (
    load_strict,
    split_finetuned_checkpoint,
    split_omg_seg_checkpoint,
    trunk_from_open_clip,
)
from altp.models.omg.visual import OmgLlavaVisual

__all__ = ["LORA_ALPHA", "llama_from_official", "load_official_visual", "write_official_layouts"]

LORA_ALPHA = 256.0  # configs/finetune/*.py: LoraConfig(r=512, lora_alpha=256)
_LLM_COPY = ("transformer_decoder_llm.", "mask_embed_llm.")
_LORA_TARGETS = (
    "attention.wqkv",
    "attention.wo",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
)


def load_official_visual(
    visual: OmgLlavaVisual,
    *,
    open_clip_state: Mapping[str, Tensor],
    omg_seg_state: Mapping[str, Tensor],
    finetuned_state: Mapping[str, Tensor],
    class_embed: Tensor,
) -> dict[str, list[str]]:
    """Fill every parameter of ``visual`` from the official files, or raise.

    Returns the keys deliberately not used, by source, for the run record.
    """
    trunk, skipped_trunk = trunk_from_open_clip(open_clip_state)
    load_strict(visual.backbone, trunk, what="open_clip visual.trunk")
    seg = split_omg_seg_checkpoint(omg_seg_state)
    if seg["backbone"]:  # upstream loads omg_seg_convl.pth after open_clip: it wins
        load_strict(
            visual.backbone, seg["backbone"], what="omg_seg_convl.pth backbone", partial=True
        )
    ft = split_finetuned_checkpoint(finetuned_state)
    load_strict(visual.head, seg["head"], what="omg_seg_convl.pth panoptic_head", partial=True)
    load_strict(
        visual.head, ft["head_llm"], what="finetuned checkpoint panoptic_head", partial=True
    )
    unfilled = set(visual.head.state_dict()) - set(seg["head"]) - set(ft["head_llm"])
    if unfilled:
        raise ConversionError(
            "no official file provides these OMG-Seg head weights", missing=unfilled
        )
    load_strict(visual.projector, ft["projector"], what="finetuned checkpoint projector.model")
    load_strict(
        visual.text2vision, ft["text2vision"], what="finetuned checkpoint projector_text2vision"
    )
    visual.set_class_embed(class_embed)
    return {"open_clip": skipped_trunk, "omg_seg": sorted(seg["unused"])}


def llama_from_official(
    internlm2_state: Mapping[str, Tensor],
    internlm2_config: Mapping[str, Any],
    finetuned_state: Mapping[str, Tensor],
    *,
    lora_alpha: float = LORA_ALPHA,
    dtype: torch.dtype | None = None,
) -> tuple[LlamaConfig, dict[str, Tensor]]:
    """InternLM2 folder weights + the checkpoint's ``llm.*`` overlay -> ``(LlamaConfig, state)``."""
    overlay = split_finetuned_checkpoint(finetuned_state)["llm"]
    state = convert_internlm2_to_llama(
        internlm2_state,
        num_layers=int(internlm2_config["num_hidden_layers"]),
        num_heads=int(internlm2_config["num_attention_heads"]),
        num_kv_heads=int(internlm2_config["num_key_value_heads"]),
        bias=bool(internlm2_config.get("bias", False)),
        overlay=overlay,
        lora_alpha=lora_alpha,
        dtype=dtype,
    )
    config = llama_config_from_internlm2(
        internlm2_config, vocab_size=state["model.embed_tokens.weight"].shape[0]
    )
    return config, state


def write_official_layouts(
    visual: OmgLlavaVisual,
    llama_state: Mapping[str, Tensor],
    *,
    num_heads: int,
    num_kv_heads: int,
    base_vocab: int,
    lora_rank: int = 4,
    lora_alpha: float = LORA_ALPHA,
    seed: int = 0,
) -> dict[str, dict[str, Tensor]]:
    """Write ``visual`` and a Llama state in the official layouts.

    The LLM is split like OMG-LLaVA's files: the InternLM2 folder holds a base
    whose linears are ``W - (alpha / r) B A`` for random LoRA factors and whose
    vocabulary is cut to ``base_vocab`` rows (the checkpoint's resized
    embeddings and output head replace them); the checkpoint holds the LoRA
    pairs, embeddings and head under ``llm.base_model.model.``.

    Returns ``open_clip``, ``omg_seg`` (``state_dict`` of ``omg_seg_convl.pth``),
    ``finetuned`` and ``internlm2`` state dicts.
    """
    g = torch.Generator().manual_seed(seed)
    head = visual.head.state_dict()
    omg_seg = {
        f"panoptic_head.{k}": v.clone() for k, v in head.items() if not k.startswith(_LLM_COPY)
    }
    finetuned = {
        f"visual_encoder.panoptic_head.{k}": v.clone()
        for k, v in head.items()
        if k.startswith(_LLM_COPY)
    }
    finetuned |= {
        f"projector.model.{k}": v.clone() for k, v in visual.projector.state_dict().items()
    }
    finetuned |= {
        f"projector_text2vision.{k}": v.clone() for k, v in visual.text2vision.state_dict().items()
    }
    open_clip = {f"visual.trunk.{k}": v.clone() for k, v in visual.backbone.state_dict().items()}

    internlm2 = llama_to_internlm2(llama_state, num_heads=num_heads, num_kv_heads=num_kv_heads)
    for key in ("model.tok_embeddings.weight", "output.weight"):
        finetuned[OMG_LLAVA_LLM_PREFIX + key] = internlm2[key].clone()
        internlm2[key] = internlm2[key][:base_vocab].clone()

    def lora(module: str, w: Tensor) -> Tensor:
        """Store a random LoRA pair for ``module`` and return the base it must sit on."""
        a = torch.randn(lora_rank, w.shape[1], generator=g, dtype=torch.float64) * 0.02
        b = torch.randn(w.shape[0], lora_rank, generator=g, dtype=torch.float64) * 0.02
        finetuned[f"{OMG_LLAVA_LLM_PREFIX}{module}.lora_A.default.weight"] = a.to(w.dtype)
        finetuned[f"{OMG_LLAVA_LLM_PREFIX}{module}.lora_B.default.weight"] = b.to(w.dtype)
        return (w.to(torch.float64) - (lora_alpha / lora_rank) * (b @ a)).to(w.dtype)

    for key in list(internlm2):
        module = key.removesuffix(".weight")
        if module.endswith(_LORA_TARGETS):
            internlm2[key] = lora(module, internlm2[key])
    # peft also wraps the output head: its base is then stored as output.base_layer.weight.
    head_w = finetuned.pop(OMG_LLAVA_LLM_PREFIX + "output.weight")
    finetuned[OMG_LLAVA_LLM_PREFIX + "output.base_layer.weight"] = lora("output", head_w)
    return {
        "open_clip": open_clip,
        "omg_seg": omg_seg,
        "finetuned": finetuned,
        "internlm2": internlm2,
    }
