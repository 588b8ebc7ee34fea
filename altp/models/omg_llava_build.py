"""Every OMG-LLaVA there is, by name: the builders ``conf/model/omg_llava*.yaml`` instantiate.

================  ==============================================================  ==================
name              what                                                            weights
================  ==============================================================  ==================
omg_llava         the GCG model as released (InternLM2-chat-7B with the           the official files
                  finetuned LoRA merged, ConvNeXt-L CLIP, OMG-Seg head)
omg_llava_tiny    toy width, 32 GQA decoder layers; CPU, tests                    seeded random
================  ==============================================================  ==================

Both are the same class and code path (:class:`altp.models.omg_llava.OmgLlava`):
1024 px input, 16x16 grid / 256 pixel tokens plus separator and object tokens,
the InternLM2 chat prompt and added tokens, the six GCG questions, ``[SEG]``
decoding through the LLM copy of the OMG-Seg decoder. The visual sizes are
:data:`~altp.models.omg.visual.OMG_LLAVA_7B` / :data:`~altp.models.omg.visual.OMG_LLAVA_TINY`,
the LLM's come from an InternLM2 ``config.json`` (the official one, or
:data:`TINY_INTERNLM2_CONFIG`). Each named builder picks sizes and a weights
source; :func:`_build_omg_llava` puts the model together. Look a builder up by
name in :data:`OMG_LLAVA_BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import LlamaForCausalLM

from altp.models.base import parse_dtype
from altp.models.omg.internlm2_chat import llama_config_from_internlm2
from altp.models.omg.tokenizer import OMG_TINY_TOKENIZER_DIR, OmgTokenIds, load_internlm2_tokenizer
from altp.models.omg.visual import OMG_LLAVA_7B, OMG_LLAVA_TINY, OmgLlavaVisual, OmgVisualConfig
from altp.models.omg_llava import OmgLlava
from altp.models.omg_llava_convert import OFFICIAL_LLM_WEIGHTS, load_official_parts
from altp.models.random_weights import randomize_, wire_bigram_chain_

__all__ = [
    "VISION_SIGNALS",
    "OMG_LLAVA_BUILDERS", "TINY_INTERNLM2_CONFIG", "build_omg_llava", "build_omg_llava_tiny", "script_",
    "tiny_class_embed",
]

# What every builder's model offers the LLM-input pruners (altp.pruning.base.VisionSignals), read by the
# runner before any weight loads: the ConvNeXt has no CLS token and no attention.
VISION_SIGNALS: frozenset[str] = frozenset()

#: An InternLM2 ``config.json`` at toy width (``vocab_size`` is set from the tokenizer).
TINY_INTERNLM2_CONFIG: dict[str, Any] = {
    "architectures": ["InternLM2ForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA, 4 query heads per KV head in the 7B model
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 2048,
    "rope_theta": 1000000,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


# -- the named builders ------------------------------------------------------------------------
def build_omg_llava(
    *,
    internlm2_dir: str,
    omg_seg_ckpt: str,
    finetuned_ckpt: str,
    class_embed: str,
    convnext_ckpt: str,
    dtype: str = "bfloat16",
    device: str = "cuda",
    max_new_tokens: int = 100,
    trust_pickle: bool = False,
    visual_config: OmgVisualConfig = OMG_LLAVA_7B,
) -> OmgLlava:
    """OMG-LLaVA (the GCG model) from the official files (:mod:`altp.models.omg_llava_convert`).

    Args:
        internlm2_dir: a download of ``internlm/internlm2-chat-7b`` (``config.json``,
            ``tokenizer.model``, weight shards).
        omg_seg_ckpt: ``omg_seg_convl.pth`` of ``zhangtao-whu/OMG-LLaVA``.
        finetuned_ckpt: ``finetuned_gcg.pth`` of ``zhangtao-whu/OMG-LLaVA``.
        class_embed: ``convnext_large_d_320_CocoPanopticOVDataset.pth`` of the same repo.
        convnext_ckpt: ``open_clip_pytorch_model.bin`` of
            ``laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup``.
        dtype: the LLM's dtype (``bfloat16``, ``float16`` or ``float32``); the
            visual side is float32 as upstream.
        device: ``cuda``, ``cuda:i`` or ``cpu``.
        max_new_tokens: generation length (upstream: 100).
        trust_pickle: unpickle the ``.pth`` files fully (only needed if they carry
            non-tensor objects); off by default.
        visual_config: the visual sizes (the official ones; tests pass the tiny
            ones). The class-embedding file decides the number of prototypes.

    Raises:
        MissingCheckpointError: a file is absent (every file is checked before
            any is read).
        ConversionError: an unmapped or missing key in any file (upstream loads
            with ``strict=False`` and would silently drop it).
    """
    torch_dtype = parse_dtype(dtype)
    parts = load_official_parts(
        internlm2_dir=internlm2_dir, omg_seg_ckpt=omg_seg_ckpt, finetuned_ckpt=finetuned_ckpt,
        class_embed=class_embed, convnext_ckpt=convnext_ckpt, dtype=torch_dtype, trust_pickle=trust_pickle,
        visual_config=visual_config,
    )  # fmt: skip
    return _build_omg_llava(
        visual=parts.visual, llm=parts.llm, tokenizer=parts.tokenizer, token_ids=parts.token_ids, name="omg_llava",
        dtype=torch_dtype, device=device, max_new_tokens=max_new_tokens,
        llm_weights=OFFICIAL_LLM_WEIGHTS.format(dtype=dtype),
    )  # fmt: skip


def build_omg_llava_tiny(
    *,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    max_new_tokens: int = 32,
    script: str | None = None,
) -> OmgLlava:
    """A random OMG-LLaVA at toy width, deterministic by ``seed`` (CPU tests and CI).

    Only widths shrink (:data:`~altp.models.omg.visual.OMG_LLAVA_TINY`, a 64-wide
    Llama); 32 decoder layers so FastV's K=2 and PDrop's [8, 16, 24] schedules apply
    unchanged. The LLM config goes through
    :func:`~altp.models.omg.internlm2_chat.llama_config_from_internlm2` from an
    InternLM2-style dict, as the official one does.

    Args:
        seed: weight seed (:func:`altp.models.random_weights.randomize_`).
        dtype: the LLM's dtype (``float32`` or ``bfloat16``); the visual side is float32.
        device: ``cpu`` or ``cuda[:i]``.
        max_new_tokens: default generation length.
        script: if given, greedy decoding after the prompt follows this answer and
            then ``<|im_end|>`` (see :func:`script_`), so runs exercise phrases,
            ``[SEG]`` states and masks.

    Example:
        >>> m = build_omg_llava_tiny(seed=0)
        >>> m.num_visual, m.grid
        (256, (16, 16))
    """
    tok, ids = load_internlm2_tokenizer(OMG_TINY_TOKENIZER_DIR)
    # Upstream resizes the embeddings after [SEG] <p> </p> <region>; <mark> gets no row.
    config = llama_config_from_internlm2({**TINY_INTERNLM2_CONFIG, "vocab_size": ids.base_vocab},
                                         vocab_size=ids.base_vocab + 4)  # fmt: skip
    visual = OmgLlavaVisual(config=OMG_LLAVA_TINY)
    llm = LlamaForCausalLM(config)

    def draw(model: OmgLlava) -> None:
        randomize_(model, seed=seed)
        model.visual.set_class_embed(tiny_class_embed(seed))

    return _build_omg_llava(
        visual=visual, llm=llm, tokenizer=tok, token_ids=ids, name="omg_llava_tiny", dtype=parse_dtype(dtype),
        device=device, max_new_tokens=max_new_tokens, llm_weights="random (tiny test model)",
        weights=draw, script=script,
    )  # fmt: skip


#: Every OMG-LLaVA builder by registry name (= its ``conf/model/`` file name).
OMG_LLAVA_BUILDERS: dict[str, Callable[..., OmgLlava]] = {
    "omg_llava": build_omg_llava,
    "omg_llava_tiny": build_omg_llava_tiny,
}


# -- assembly ------------------------------------------------------------------------------------
def _build_omg_llava(
    *,
    visual: OmgLlavaVisual,
    llm: LlamaForCausalLM,
    tokenizer: Any,
    token_ids: OmgTokenIds,
    name: str,
    dtype: torch.dtype,
    device: str,
    max_new_tokens: int,
    llm_weights: str,
    weights: Callable[[OmgLlava], None] | None = None,
    script: str | None = None,
) -> OmgLlava:
    """The one place an OMG-LLaVA is put together: adapter, weights, script, device.

    Args:
        visual, llm, tokenizer, token_ids: the parts (the LLM is cast to ``dtype``,
            the visual side stays float32).
        name: registry name, recorded in run files.
        llm_weights: one line for the run record saying what the LLM weights are.
        weights: fills the parameters after assembly (a seeded draw); None when the
            parts already hold their weights.
        script: an answer to wire into the weights (:func:`script_`).
    """
    model = OmgLlava(
        visual=visual, llm=llm, tokenizer=tokenizer, token_ids=token_ids, llm_dtype=dtype, name=name,
        max_new_tokens=max_new_tokens, llm_weights=llm_weights,
    )  # fmt: skip
    if weights is not None:
        weights(model)
    if script is not None:
        script_(model, script)
    return model.to(torch.device(device)).eval()


def tiny_class_embed(seed: int) -> torch.Tensor:
    """L2-normalised ``(num_classes, prototypes, dims)`` class embeddings of the tiny config."""
    c = OMG_LLAVA_TINY
    g = torch.Generator().manual_seed(int(seed) + 1)
    e = torch.randn(c.num_classes, c.class_prototypes, c.class_dims, generator=g)
    return torch.nn.functional.normalize(e, dim=-1)


def script_(model: OmgLlava, script: str, *, embed_scale: float = 4.0, logit_scale: float = 8.0) -> None:
    """Wire a bigram chain into a random model so greedy decoding emits ``script`` then ``<|im_end|>``.

    The chain is ``[last prompt token, *tokens(script), <|im_end|>]``
    (:func:`altp.models.random_weights.wire_bigram_chain_`); ``embed_scale`` is 4, not
    GLaMM's 3: the 256 + 1 + N visual tokens perturb the states more, and at 3 one
    seed in two broke the chain. Every question's prompt ends with the same token, so
    every question gives the same answer. Every token may appear once as a
    predecessor and once as a successor.

    Raises:
        ValueError: the script repeats a token, or the prompts end differently.
    """
    ends = {s[-1] for s in model.suffix_ids}
    if len(ends) != 1:
        raise ValueError(f"the GCG prompts end with different tokens {sorted(ends)}; cannot script them")
    chain = [ends.pop(), *model.tokenizer.encode(script, add_special_tokens=False), model.token_ids.im_end]
    pred, succ = chain[:-1], chain[1:]
    if len(set(pred)) != len(pred) or len(set(succ)) != len(succ):
        raise ValueError(f"script {script!r} repeats a token; every token must be unique")
    wire_bigram_chain_(model.llm, chain, embed_scale=embed_scale, logit_scale=logit_scale)
