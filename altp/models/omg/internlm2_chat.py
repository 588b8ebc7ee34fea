"""InternLM2-chat as OMG-LLaVA uses it: Llama config, special tokens, prompt.

Facts (see ``docs/omg_llava_port.md`` for the upstream file of each):

* Template ``internlm2_chat`` (xtuner ``utils/templates.py``): the GCG tool
  (``omg_llava/tools/gcg_omg_seg_llava.py``) formats only ``INSTRUCTION`` with
  ``input = "<image>\\n" + question``; no system block. Stop word
  ``<|im_end|>``; generation also stops at ``eos_token_id`` (``</s>``).
* The prompt is tokenised in two chunks around ``<image>``: the first with the
  tokenizer's BOS (``tokenizer.encode(chunk)``), the second without; the image
  embeddings go in between.
* The GCG tool tries the questions of :data:`GCG_QUESTIONS` in order and keeps
  the first answer that contains at least one ``[SEG]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import LlamaConfig

__all__ = [
    "GCG_QUESTIONS",
    "IMAGE_PLACEHOLDER",
    "OMG_LLAVA_SPECIAL_TOKENS",
    "STOP_WORDS",
    "add_omg_llava_special_tokens",
    "gcg_prompt",
    "llama_config_from_internlm2",
]

IMAGE_PLACEHOLDER = "<image>"
STOP_WORDS = ("<|im_end|>",)
_INSTRUCTION = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
# omg_llava/tools/gcg_omg_seg_llava.py, GCG_QUESTIONS (tried in this order).
GCG_QUESTIONS: tuple[str, ...] = (
    "Could you please give me a detailed description of the image? Please respond with interleaved segmentation masks for the corresponding parts of the answer.",
    "Can you provide a thorough description of the this image? Please output with interleaved segmentation masks for the corresponding phrases.",
    "Please describe in detail the contents of the image. Please respond with interleaved segmentation masks for the corresponding parts of the answer.",
    "Could you give a comprehensive explanation of what can be found within this picture? Please output with interleaved segmentation masks for the corresponding phrases.",
    "Could you give me an elaborate explanation of this picture? Please respond with interleaved segmentation masks for the corresponding phrases.",
    "Could you provide me with a detailed analysis of this photo? Please output with interleaved segmentation masks for the corresponding parts of the answer.",
)


def gcg_prompt(question: str = GCG_QUESTIONS[0]) -> str:
    """The text upstream feeds the tokenizer (before splitting at ``<image>``)."""
    return _INSTRUCTION.format(input=f"{IMAGE_PLACEHOLDER}\n{question}")


# Upstream order (omg_llava/model/omg_llava.py, OMG_LLaVA._add_special_tokens):
# these four, then resize_token_embeddings, then "<mark>" (which therefore has
# no embedding row; GCG never uses it).
OMG_LLAVA_SPECIAL_TOKENS: tuple[tuple[str, ...], ...] = (
    ("[SEG]", "<p>", "</p>", "<region>"),
    ("<mark>",),
)


def llama_config_from_internlm2(
    config: Mapping[str, Any], *, vocab_size: int | None = None
) -> LlamaConfig:
    """Build the ``LlamaConfig`` equivalent to an InternLM2 ``config.json``.

    ``vocab_size`` overrides the config's (OMG-LLaVA's resized embeddings have
    92548 rows against InternLM2's 92544). ``rope_scaling`` ``{"type": "dynamic"}``
    maps to transformers' ``"dynamic"`` rope type, which like InternLM2's
    ``InternLM2DynamicNTKScalingRotaryEmbedding`` only rescales the base for
    sequences longer than ``max_position_embeddings``.
    """
    required = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "max_position_embeddings",
        "rope_theta",
        "vocab_size",
    )
    absent = [k for k in required if k not in config]
    if absent:
        raise KeyError(f"InternLM2 config lacks {absent}; pass the folder's config.json as a dict")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"InternLM2 configs use hidden_act 'silu', got {config['hidden_act']!r}")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(config["rope_theta"])}
    scaling = config.get("rope_scaling")
    if scaling:
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind not in ("dynamic", "linear"):
            raise ValueError(
                f"unsupported InternLM2 rope_scaling type {kind!r}; expected 'dynamic' or 'linear'"
            )
        rope = {
            "rope_type": kind,
            "factor": float(scaling["factor"]),
            "rope_theta": float(config["rope_theta"]),
        }
    return LlamaConfig(
        vocab_size=int(vocab_size if vocab_size is not None else config["vocab_size"]),
        hidden_size=int(config["hidden_size"]),
        intermediate_size=int(config["intermediate_size"]),
        num_hidden_layers=int(config["num_hidden_layers"]),
        num_attention_heads=int(config["num_attention_heads"]),
        num_key_value_heads=int(config["num_key_value_heads"]),
        hidden_act="silu",
        max_position_embeddings=int(config["max_position_embeddings"]),
        rms_norm_eps=float(config["rms_norm_eps"]),
        rope_parameters=rope,
        attention_bias=bool(config.get("bias", False)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        bos_token_id=config.get("bos_token_id", 1),
        eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=config.get("pad_token_id", 2),
    )


def add_omg_llava_special_tokens(tokenizer: Any) -> dict[str, int]:
    """Add OMG-LLaVA's tokens in upstream order and return their ids.

    Upstream adds ``[SEG] <p> </p> <region>`` (``special_tokens=True``), resizes
    the embeddings, then adds ``<mark>``; the ids are therefore
    ``len(tokenizer) + 0..4`` of the base tokenizer (92544..92548 for
    InternLM2-chat-7B). Raises if a token already exists, because that would
    shift every later id away from the checkpoint's embedding rows.
    """
    start = len(tokenizer)
    vocab = tokenizer.get_vocab()
    clash = [t for group in OMG_LLAVA_SPECIAL_TOKENS for t in group if t in vocab]
    if clash:
        raise ValueError(
            f"tokenizer already has {clash}; load the plain InternLM2 tokenizer, not a modified one"
        )
    for group in OMG_LLAVA_SPECIAL_TOKENS:
        tokenizer.add_tokens(list(group), special_tokens=True)
    ids = {
        t: tokenizer.convert_tokens_to_ids(t) for group in OMG_LLAVA_SPECIAL_TOKENS for t in group
    }
    expected = {
        t: start + i for i, t in enumerate(t for group in OMG_LLAVA_SPECIAL_TOKENS for t in group)
    }
    if ids != expected:
        raise ValueError(f"special token ids {ids} differ from the upstream order {expected}")
    return ids
