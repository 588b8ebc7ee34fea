"""A tiny random GLaMM for tests and CI: same code, same 336 px / 24x24 CLIP grid.

Everything GLaMM-specific is kept (576 visual tokens, the prompt, the added
tokens, SAM's text-prompted mask path, 32 decoder layers so FastV's K=2 and
PDrop's [8, 16, 24] schedules apply unchanged); only widths shrink and SAM's
input drops from 1024 to 256 px. Weights are drawn from one seeded generator in
a fixed (name-sorted) order, so the same seed gives the same model on any
machine, independent of transformers' own init order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from altp.models.base import parse_dtype
from altp.models.glamm import GLaMM, GLaMMConfig
from altp.models.sam import GroundingEncoderConfig
from altp.models.tokenizer import TINY_TOKENIZER_DIR, load_glamm_tokenizer

__all__ = ["build_glamm_full_random", "build_glamm_tiny", "randomize_", "script_"]


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


def build_glamm_tiny(
    *,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    max_new_tokens: int = 32,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 32,
    num_heads: int = 4,
    clip_hidden_size: int = 32,
    clip_layers: int = 2,
    sam_image_size: int = 256,
    sam_hidden_size: int = 32,
    sam_layers: int = 2,
    prompt_dim: int = 32,
    script: str | None = None,
) -> GLaMM:
    """A random GLaMM at toy width, deterministic by ``seed``.

    Args:
        seed: weight seed.
        dtype: ``float32`` or ``bfloat16``.
        device: ``cpu`` or ``cuda[:i]``.
        max_new_tokens: default generation length.
        hidden_size, intermediate_size, num_layers, num_heads: the LLM.
        clip_hidden_size, clip_layers: the CLIP tower (336 px, 14 px patches kept).
        sam_image_size, sam_hidden_size, sam_layers: SAM's encoder (16 px patches).
        prompt_dim: SAM prompt width = text_hidden_fcs output (256 in GLaMM).
        script: if given, greedy decoding after the prompt follows this answer
            (e.g. ``"<p>A red circle</p>[SEG] on the left."``) and then EOS, so
            runs exercise phrases, [SEG] states and masks; see :func:`script_`.

    Example:
        >>> m = build_glamm_tiny(seed=0)
        >>> m.num_visual, m.grid
        (576, (24, 24))
    """
    tok, ids = load_glamm_tokenizer(TINY_TOKENIZER_DIR)
    config = GLaMMConfig(
        clip=dict(hidden_size=clip_hidden_size, intermediate_size=2 * clip_hidden_size, num_hidden_layers=clip_layers,
                  num_attention_heads=2, image_size=336, patch_size=14, hidden_act="quick_gelu"),
        llm=dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
                 num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=2048,
                 rms_norm_eps=1e-6, tie_word_embeddings=False),
        sam=GroundingEncoderConfig(
            image_size=sam_image_size, patch_size=16, hidden_size=sam_hidden_size, num_layers=sam_layers,
            num_heads=2, global_attn_indexes=(sam_layers - 1,), window_size=4, prompt_dim=prompt_dim,
            decoder_mlp_dim=2 * prompt_dim, decoder_layers=2, decoder_heads=2, mask_in_chans=8),
        out_dim=prompt_dim,
    )
    model = GLaMM(config=config, tokenizer=tok, token_ids=ids, name="glamm_tiny", max_new_tokens=max_new_tokens)
    randomize_(model, seed=seed)
    if script is not None:
        script_(model, script)
    return model.to(device=torch.device(device), dtype=parse_dtype(dtype)).eval()


def build_glamm_full_random(
    *,
    seed: int = 0,
    dtype: str = "bfloat16",
    device: str = "cuda",
    max_new_tokens: int = 512,
    script: str | None = None,
) -> GLaMM:
    """GLaMM at full size (Vicuna-7B, CLIP ViT-L/14-336, SAM ViT-H) with random weights.

    For GPU timing and smoke runs without the checkpoint; the tiny tokenizer stands in
    for LLaMA's (its ids all fit the 32007-row embedding). transformers' own init
    (seeded) runs directly on ``device``: seconds on a GPU, minutes on a CPU. Same
    arguments as :func:`build_glamm_tiny` for the common ones, so
    ``model=glamm_tiny model._target_=altp.models.glamm_tiny.build_glamm_full_random
    model.device=cuda model.dtype=bfloat16`` works from the command line.
    """
    tok, ids = load_glamm_tokenizer(TINY_TOKENIZER_DIR)
    torch.manual_seed(int(seed))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(parse_dtype(dtype))
    try:
        with torch.device(device):
            model = GLaMM(config=GLaMMConfig(), tokenizer=tok, token_ids=ids, name="glamm_full_random",
                          max_new_tokens=max_new_tokens)
    finally:
        torch.set_default_dtype(previous)
    if script is not None:
        script_(model, script)
    return model.to(device=torch.device(device), dtype=parse_dtype(dtype)).eval()


def script_(model: GLaMM, script: str, *, embed_scale: float = 3.0, logit_scale: float = 8.0) -> None:
    """Wire a bigram chain into a random model so greedy decoding emits ``script`` then EOS.

    For each step ``a -> b`` of ``[last prompt token, *tokens(script), EOS]`` the
    lm_head row of ``b`` becomes ``logit_scale * e_a / |e_a|`` and ``e_a`` is scaled by
    ``embed_scale``, so the input token's embedding dominates the final state and
    picks its successor; the decoder layers (and the visual tokens) still run and
    perturb the states, they just do not win the argmax. Every token may appear
    once as a predecessor and once as a successor.
    """
    tok, ids = model.tokenizer, model.token_ids
    chain = [model.suffix_ids[-1], *tok(script, add_special_tokens=False)["input_ids"], ids.eos]
    pred, succ = chain[:-1], chain[1:]
    if len(set(pred)) != len(pred) or len(set(succ)) != len(succ) or tok.unk_token_id in chain:
        raise ValueError(f"script {script!r} repeats a token or has unknown words; every token must be unique")
    emb, head = model.llm.get_input_embeddings().weight, model.llm.lm_head.weight
    with torch.no_grad():
        for a, b in zip(pred, succ, strict=True):
            head[b] = logit_scale * emb[a] / emb[a].norm()
            emb[a] *= embed_scale
