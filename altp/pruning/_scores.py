"""The last token's attention row at one decoder layer, without eager attention.

FastV and PyramidDrop both rank visual tokens by the attention weight the last
prompt token gives them: per head ``softmax(q_last K^T * scale)`` over the whole
row, then the mean over heads. Upstream gets it by running the layer in eager
mode with ``output_attentions``; here one row is recomputed from the layer's own
input norm, q/k projections and RoPE, so every layer keeps its fast kernel.
"""

from __future__ import annotations

import torch
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, apply_rotary_pos_emb

from altp.pruning._rowwise import per_sample_linear

__all__ = ["last_row_attention", "layer_keys"]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # apply_rotary_pos_emb rotates a (q, k) pair; rotating x twice costs one spare multiply of a single row.
    return apply_rotary_pos_emb(x, x, cos, sin)[0]


def layer_keys(layer: LlamaDecoderLayer, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, H_kv, N, head_dim) the post-RoPE keys ``layer`` computes from its input ``hidden`` (B, N, D)."""
    attn = layer.self_attn
    b, n, _ = hidden.shape
    k = attn.k_proj(layer.input_layernorm(hidden)).view(b, n, -1, attn.head_dim).transpose(1, 2)
    return _rope(k, cos, sin)


def last_row_attention(
    *,
    layer: LlamaDecoderLayer,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head-averaged attention weights of the last token over the whole sequence.

    Args:
        layer: a stock decoder layer (``input_layernorm`` and ``self_attn`` with
            ``q_proj``, ``k_proj``, ``head_dim``, ``scaling``).
        hidden: (B, N, D) the layer's input hidden states.
        cos, sin: (B or 1, N, head_dim) rotary embeddings of the N positions.
        keys: (B, H_kv, N, head_dim) post-RoPE keys of exactly this input, e.g.
            the layer's own KV-cache entry after it ran; computed when None.

    Returns:
        (B, N) float32: softmax per head over the row of token N-1, mean over heads.
    """
    attn = layer.self_attn
    hd = attn.head_dim
    b, n, _ = hidden.shape
    last = layer.input_layernorm(hidden[:, -1:])  # (B, 1, D)
    with per_sample_linear(attn.q_proj, last):  # one row per sample: its batch-1 bits on the CPU
        q = attn.q_proj(last).view(b, 1, -1, hd).transpose(1, 2)  # (B, H, 1, hd)
    q = _rope(q, cos[:, -1:], sin[:, -1:])
    if keys is None:
        keys = layer_keys(layer, hidden, cos, sin)  # (B, H_kv, N, hd)
    h, h_kv = q.shape[1], keys.shape[1]
    if keys.shape[2] != n:
        raise ValueError(f"keys cover {keys.shape[2]} tokens but the hidden states {n}")
    # Group the query heads by the kv head they share (GQA) instead of repeating the keys.
    q = q.reshape(b, h_kv, h // h_kv, hd)  # (B, H_kv, G, hd)
    logits = (
        torch.matmul(q.float(), keys.float().transpose(-1, -2)) * attn.scaling
    )  # (B, H_kv, G, N)
    return logits.softmax(dim=-1).mean(dim=(1, 2))  # (B, N)
