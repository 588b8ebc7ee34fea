"""A tiny random OMG-LLaVA for tests and CI: same code, same 1024 px input and 16 x 16 grid.

Everything OMG-LLaVA-specific is kept (256 pixel tokens, separator and object
tokens, the InternLM2 chat prompt and added tokens, the six GCG questions,
``[SEG]`` decoding through the LLM copy of the OMG-Seg decoder, GQA like
InternLM2, 32 decoder layers so FastV's K=2 and PDrop's [8, 16, 24] schedules
apply unchanged); only widths shrink (:data:`~altp.models.omg.visual.OMG_LLAVA_TINY`,
a 64-wide Llama). The LLM config goes through
:func:`~altp.models.omg.internlm2_chat.llama_config_from_internlm2` from an
InternLM2-style dict, as the official one does. Weights are drawn from one
seeded generator in name order (:func:`altp.models.random_weights.randomize_`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaForCausalLM

from altp.models.base import parse_dtype
from altp.models.omg.internlm2_chat import llama_config_from_internlm2
from altp.models.omg.tokenizer import OMG_TINY_TOKENIZER_DIR, load_internlm2_tokenizer
from altp.models.omg.visual import OMG_LLAVA_TINY, OmgLlavaVisual
from altp.models.omg_llava import OmgLlava
from altp.models.random_weights import randomize_

__all__ = ["TINY_INTERNLM2_CONFIG", "build_omg_llava_tiny", "script_", "tiny_class_embed"]

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


def tiny_class_embed(seed: int) -> torch.Tensor:
    """L2-normalised ``(num_classes, prototypes, dims)`` class embeddings of the tiny config."""
    c = OMG_LLAVA_TINY
    g = torch.Generator().manual_seed(int(seed) + 1)
    e = torch.randn(c.num_classes, c.class_prototypes, c.class_dims, generator=g)
    return torch.nn.functional.normalize(e, dim=-1)


def build_omg_llava_tiny(
    *,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    max_new_tokens: int = 32,
    script: str | None = None,
) -> OmgLlava:
    """A random OMG-LLaVA at toy width, deterministic by ``seed``.

    Args:
        seed: weight seed.
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
    model = OmgLlava(visual=visual, llm=llm, tokenizer=tok, token_ids=ids, llm_dtype=parse_dtype(dtype),
                     name="omg_llava_tiny", max_new_tokens=max_new_tokens,
                     llm_weights="random (tiny test model)")  # fmt: skip
    randomize_(model, seed=seed)
    model.visual.set_class_embed(tiny_class_embed(seed))
    if script is not None:
        script_(model, script)
    return model.to(torch.device(device)).eval()


def script_(
    model: OmgLlava, script: str, *, embed_scale: float = 4.0, logit_scale: float = 8.0
) -> None:
    """Wire a bigram chain into a random model so greedy decoding emits ``script`` then ``<|im_end|>``.

    As :func:`altp.models.glamm_build.script_`: for each step ``a -> b`` of
    ``[last prompt token, *tokens(script), <|im_end|>]`` the output row of ``b``
    becomes ``logit_scale * e_a / |e_a|`` and ``e_a`` is scaled by
    ``embed_scale`` (4, not GLaMM's 3: the 256 + 1 + N visual tokens perturb the
    states more, and at 3 one seed in two broke the chain). Every question's
    prompt ends with the same token, so every question gives the same answer.
    Every token may appear once as a predecessor and once as a successor.
    """
    ends = {s[-1] for s in model.suffix_ids}
    if len(ends) != 1:
        raise ValueError(
            f"the GCG prompts end with different tokens {sorted(ends)}; cannot script them"
        )
    chain = [
        ends.pop(),
        *model.tokenizer.encode(script, add_special_tokens=False),
        model.token_ids.im_end,
    ]
    pred, succ = chain[:-1], chain[1:]
    if len(set(pred)) != len(pred) or len(set(succ)) != len(succ):
        raise ValueError(f"script {script!r} repeats a token; every token must be unique")
    emb, head = model.llm.get_input_embeddings().weight, model.llm.lm_head.weight
    with torch.no_grad():
        for a, b in zip(pred, succ, strict=True):
            head[b] = logit_scale * emb[a] / emb[a].norm()
            emb[a] *= embed_scale
