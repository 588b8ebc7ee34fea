"""Seeded random weights for the tiny test models, shared by every model family.

:func:`randomize_` draws every parameter from one generator in a fixed
(name-sorted) order, so the same seed gives the same model on any machine,
independent of transformers' own init order. :func:`wire_bigram_chain_` then
makes greedy decoding follow a chosen answer, so tiny runs exercise phrases,
``[SEG]`` states and masks.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn
from transformers import LlamaForCausalLM

__all__ = ["randomize_", "wire_bigram_chain_"]


def randomize_(module: nn.Module, *, seed: int) -> None:
    """Redraw every parameter from one seeded generator, in module-name order.

    Linear / conv weights ~ N(0, 1/fan_in) so activations stay O(1) and greedy
    logits are well separated (fp32 cached vs uncached decoding must not flip
    near-ties); norms get weight 1, bias 0; biases ~ N(0, 0.02^2); every other
    parameter (embedding tables, positional and learned tokens) ~ N(0, 1).
    """
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for _, mod in sorted(module.named_modules(), key=lambda kv: kv[0]):
            is_norm = "Norm" in type(mod).__name__
            is_affine = isinstance(mod, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))
            for pname, p in sorted(mod.named_parameters(recurse=False), key=lambda kv: kv[0]):
                if is_norm:
                    val = torch.ones(p.shape) if pname == "weight" else torch.zeros(p.shape)
                elif is_affine and pname == "weight":
                    val = torch.randn(p.shape, generator=gen) / math.sqrt(math.prod(p.shape[1:]))
                elif is_affine:
                    val = 0.02 * torch.randn(p.shape, generator=gen)
                else:
                    val = torch.randn(p.shape, generator=gen)
                p.copy_(val.to(p.dtype))


def wire_bigram_chain_(lm: LlamaForCausalLM, chain: list[int], *, embed_scale: float, logit_scale: float) -> None:
    """Make greedy decoding of a random ``lm`` follow ``chain``: after ``chain[i]`` comes ``chain[i + 1]``.

    For each step ``a -> b`` the output row of ``b`` becomes ``logit_scale * e_a / |e_a|``
    and ``e_a`` is scaled by ``embed_scale``, so the input token's embedding dominates
    the final state and picks its successor; the decoder layers (and the visual
    tokens) still run and perturb the states, they just do not win the argmax. The
    caller checks that every token appears at most once as a predecessor and once as
    a successor (else two steps would overwrite each other).

    Args:
        lm: the model's causal LM (its input embeddings and ``lm_head`` are changed).
        chain: token ids, e.g. ``[last prompt token, *answer, end-of-answer]``.
    """
    # get_input_embeddings() is typed Module; a LlamaForCausalLM's is an nn.Embedding
    emb, head = cast(torch.Tensor, lm.get_input_embeddings().weight), lm.lm_head.weight
    with torch.no_grad():
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            head[b] = logit_scale * emb[a] / emb[a].norm()
            emb[a] *= embed_scale
