"""InternLM2 checkpoints -> transformers Llama classes, with OMG-LLaVA's LoRA merged.

OMG-LLaVA's LLM is InternLM2-chat-7B (remote code). Architecturally it *is* a
Llama: RMSNorm, SwiGLU MLP, GQA attention, rotate-half RoPE
(``cos/sin = cat(freqs, freqs)``, base ``rope_theta``, dynamic NTK scaling that
only changes anything beyond ``max_position_embeddings``). Only the weight
layout differs, so converting the weights lets the pruning engine drive stock
``LlamaForCausalLM`` unchanged. Name map (InternLM2 -> Llama)::

    model.tok_embeddings                  -> model.embed_tokens
    model.layers.i.attention.wqkv         -> self_attn.{q,k,v}_proj   (split, below)
    model.layers.i.attention.wo           -> self_attn.o_proj
    model.layers.i.feed_forward.w1/w3/w2  -> mlp.gate_proj/up_proj/down_proj
    model.layers.i.attention_norm         -> input_layernorm
    model.layers.i.ffn_norm               -> post_attention_layernorm
    model.norm                            -> model.norm
    output                                -> lm_head

Fused ``wqkv`` layout (``modeling_internlm2.py``, ``InternLM2Attention.forward``:
``rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + num_key_value_groups)``):
output rows are grouped by KV head ``h`` in ``0..H_kv-1``; each group holds
``G = H / H_kv`` query heads, then its key head, then its value head, each of
``head_dim`` rows. Query head ``h * G + g`` is group ``h``'s ``g``-th query, which
is exactly the head order Llama's ``repeat_kv`` expects.

OMG-LLaVA's checkpoint (``OMG_LLaVA.state_dict``, written by
``omg_llava/tools/convert_deepspeed2pth.py``) stores the LLM as a peft model:
keys start with ``llm.base_model.model.``; LoRA factors are
``<module>.lora_A.default.weight`` ``(r, in)`` and ``<module>.lora_B.default.weight``
``(out, r)`` with ``r = 512``, ``lora_alpha = 256`` (scaling ``alpha / r = 0.5``);
the resized embeddings and output head are stored in full (the head possibly as
``output.base_layer.weight`` when peft wrapped it). :func:`convert_internlm2_to_llama`
overlays those on the base InternLM2 weights and refuses to run when any key is
left unmapped or any expected key is missing (upstream loads with
``strict=False`` and silently drops what does not match).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

__all__ = [
    "OMG_LLAVA_LLM_PREFIX",
    "ConversionError",
    "convert_internlm2_to_llama",
    "fuse_wqkv",
    "llama_to_internlm2",
    "lora_delta",
    "split_wqkv",
]

OMG_LLAVA_LLM_PREFIX = "llm.base_model.model."
_LINEAR = {  # InternLM2 per-layer linear -> Llama per-layer name (wqkv handled apart)
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
}
_NORMS = {"attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_GLOBAL = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_VOCAB_KEYS = ("model.tok_embeddings.weight", "output.weight")
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


class ConversionError(ValueError):
    """Raised when a checkpoint does not map one-to-one onto the target model."""

    def __init__(self, message: str, *, unmapped: Iterable[str] = (), missing: Iterable[str] = ()):
        self.unmapped = sorted(unmapped)
        self.missing = sorted(missing)
        parts = [message]
        if self.unmapped:
            parts.append(f"{len(self.unmapped)} unmapped key(s): {self.unmapped}")
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {self.missing}")
        super().__init__("; ".join(parts))


def _groups(num_heads: int, num_kv_heads: int) -> int:
    if num_heads % num_kv_heads != 0:
        raise ValueError(
            f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
        )
    return num_heads // num_kv_heads


def split_wqkv(
    fused: Tensor, *, num_heads: int, num_kv_heads: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Split InternLM2's fused ``wqkv`` weight ``(out, in)`` or bias ``(out,)``.

    ``out = H_kv * (G + 2) * head_dim`` laid out ``(h, gs, d)``; see the module
    docstring. Returns Llama's ``q (H * d, ...)``, ``k (H_kv * d, ...)``,
    ``v (H_kv * d, ...)`` with query heads ordered ``h * G + g``.
    """
    G = _groups(num_heads, num_kv_heads)
    rows = fused.shape[0]
    if rows % (num_kv_heads * (G + 2)) != 0:
        raise ValueError(
            f"wqkv has {rows} output rows, not a multiple of num_kv_heads * (G + 2) = "
            f"{num_kv_heads * (G + 2)}; check num_heads / num_kv_heads"
        )
    d = rows // (num_kv_heads * (G + 2))
    grouped = fused.reshape(num_kv_heads, G + 2, d, *fused.shape[1:])
    q = grouped[:, :G].reshape(num_heads * d, *fused.shape[1:])
    k = grouped[:, G].reshape(num_kv_heads * d, *fused.shape[1:])
    v = grouped[:, G + 1].reshape(num_kv_heads * d, *fused.shape[1:])
    return q.clone(), k.clone(), v.clone()


def fuse_wqkv(q: Tensor, k: Tensor, v: Tensor, *, num_heads: int, num_kv_heads: int) -> Tensor:
    """Inverse of :func:`split_wqkv` (used to write checkpoints in the official layout)."""
    G = _groups(num_heads, num_kv_heads)
    d = q.shape[0] // num_heads
    tail = q.shape[1:]
    grouped = torch.cat(
        [
            q.reshape(num_kv_heads, G, d, *tail),
            k.reshape(num_kv_heads, 1, d, *tail),
            v.reshape(num_kv_heads, 1, d, *tail),
        ],
        dim=1,
    )
    return grouped.reshape(num_kv_heads * (G + 2) * d, *tail)


def lora_delta(lora_a: Tensor, lora_b: Tensor, *, lora_alpha: float) -> Tensor:
    """Weight update of a LoRA pair: ``(alpha / r) * B @ A`` in float32 or wider.

    Args:
        lora_a: ``(r, in)``; ``r`` is read from here.
        lora_b: ``(out, r)``.
    Returns:
        ``(out, in)``; peft's ``W x + scaling * B(A(x))`` equals ``(W + delta) x``.
    """
    if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
        raise ValueError(
            f"LoRA factors must be A (r, in) and B (out, r), got {tuple(lora_a.shape)} and {tuple(lora_b.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(lora_a.dtype, lora_b.dtype), torch.float32)
    return (lora_alpha / lora_a.shape[0]) * (lora_b.to(dtype) @ lora_a.to(dtype))


def _expected_keys(num_layers: int, *, bias: bool) -> list[str]:
    keys = list(_GLOBAL)
    for i in range(num_layers):
        p = f"model.layers.{i}."
        keys.append(p + "attention.wqkv.weight")
        keys += [p + name + ".weight" for name in _LINEAR]
        keys += [p + name + ".weight" for name in _NORMS]
        if bias:
            keys += [p + "attention.wqkv.bias", p + "attention.wo.bias"]
    return keys


def _linear_modules(num_layers: int) -> set[str]:
    mods = {"output"}
    for i in range(num_layers):
        mods.add(f"model.layers.{i}.attention.wqkv")
        mods.update(f"model.layers.{i}.{name}" for name in _LINEAR)
    return mods


def convert_internlm2_to_llama(
    base: Mapping[str, Tensor],
    *,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    bias: bool = False,
    overlay: Mapping[str, Tensor] | None = None,
    lora_alpha: float | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """Map an InternLM2 state dict (plus OMG-LLaVA's overlay) to Llama names.

    Args:
        base: the InternLM2 folder's weights, official names (``model.*``, ``output.weight``).
        num_layers / num_heads / num_kv_heads / bias: from the InternLM2 ``config.json``.
        overlay: the LLM part of the OMG-LLaVA checkpoint with
            :data:`OMG_LLAVA_LLM_PREFIX` already stripped: full tensors that
            replace base ones (``model.tok_embeddings.weight`` and ``output.weight``
            may change the vocabulary size; ``<m>.base_layer.weight`` means
            ``<m>.weight``) and LoRA pairs ``<m>.lora_{A,B}[.default].weight``
            on any linear ``<m>``, merged as ``W + (alpha / r) B A``.
        lora_alpha: peft's ``lora_alpha`` (256 upstream); required iff LoRA keys exist.
        dtype: dtype of the returned tensors (default: each base tensor's own).
            LoRA is merged in float32 or wider before the cast.

    Returns:
        State dict for ``LlamaForCausalLM``.

    Raises:
        ConversionError: listing every unmapped and every missing key, a lone
            LoRA factor, or a shape change outside the vocabulary dimension.
    """
    expected = _expected_keys(num_layers, bias=bias)
    unmapped = sorted(set(base) - set(expected))
    missing = sorted(set(expected) - set(base))
    if unmapped or missing:
        raise ConversionError(
            "the InternLM2 weights do not match the config (num_hidden_layers, bias)",
            unmapped=unmapped,
            missing=missing,
        )
    weights = dict(base)

    lora: dict[str, dict[str, Tensor]] = {}
    overlay_unmapped = []
    linear_modules = _linear_modules(num_layers)
    for key, tensor in (overlay or {}).items():
        m = _LORA.match(key)
        if m is not None and m["module"] in linear_modules:
            lora.setdefault(m["module"], {})[m["ab"]] = tensor
            continue
        target = key.replace(".base_layer.weight", ".weight")
        if target not in weights:
            overlay_unmapped.append(key)
            continue
        old = weights[target]
        vocab_change = target in _VOCAB_KEYS and tensor.shape[1:] == old.shape[1:]
        if tensor.shape != old.shape and not vocab_change:
            raise ConversionError(
                f"overlay {key} has shape {tuple(tensor.shape)} but the base has {tuple(old.shape)}; "
                "only the embedding and output head may change the vocabulary size"
            )
        weights[target] = tensor
    if overlay_unmapped:
        raise ConversionError(
            "the OMG-LLaVA LLM overlay has keys this converter does not know",
            unmapped=overlay_unmapped,
        )
    lone = [f"{mod}.lora_{'B' if 'A' in ab else 'A'}" for mod, ab in lora.items() if len(ab) != 2]
    if lone:
        raise ConversionError("LoRA factors must come in A/B pairs", missing=lone)
    if lora and lora_alpha is None:
        raise ConversionError(
            f"the overlay has {len(lora)} LoRA pairs: pass lora_alpha (256 for OMG-LLaVA)"
        )
    for mod, ab in lora.items():
        w = weights[mod + ".weight"]
        delta = lora_delta(ab["A"], ab["B"], lora_alpha=float(lora_alpha))  # type: ignore[arg-type]
        if delta.shape != w.shape:
            raise ConversionError(
                f"LoRA on {mod} gives an update of shape {tuple(delta.shape)} for a weight of {tuple(w.shape)}"
            )
        weights[mod + ".weight"] = (w.to(delta.dtype) + delta).to(w.dtype)

    out: dict[str, Tensor] = {}
    for key, llama_key in _GLOBAL.items():
        out[llama_key] = weights[key]
    if out["model.embed_tokens.weight"].shape[0] != out["lm_head.weight"].shape[0]:
        raise ConversionError(
            f"embedding rows ({out['model.embed_tokens.weight'].shape[0]}) and output head rows "
            f"({out['lm_head.weight'].shape[0]}) differ; take both from the same checkpoint"
        )
    for i in range(num_layers):
        src, dst = f"model.layers.{i}.", f"model.layers.{i}."
        for suffix in ("weight", "bias") if bias else ("weight",):
            q, k, v = split_wqkv(
                weights[src + "attention.wqkv." + suffix],
                num_heads=num_heads,
                num_kv_heads=num_kv_heads,
            )
            out[dst + "self_attn.q_proj." + suffix] = q
            out[dst + "self_attn.k_proj." + suffix] = k
            out[dst + "self_attn.v_proj." + suffix] = v
        if bias:
            out[dst + "self_attn.o_proj.bias"] = weights[src + "attention.wo.bias"]
        for name, llama in _LINEAR.items():
            out[dst + llama + ".weight"] = weights[src + name + ".weight"]
        for name, llama in _NORMS.items():
            out[dst + llama + ".weight"] = weights[src + name + ".weight"]
    if dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return out


def llama_to_internlm2(
    state: Mapping[str, Tensor], *, num_heads: int, num_kv_heads: int
) -> dict[str, Tensor]:
    """Inverse name map: write Llama weights in InternLM2's official layout.

    Used to build test checkpoints and to check the converter round-trips.
    Raises :class:`ConversionError` on any key it cannot place.
    """
    inverse_global = {v: k for k, v in _GLOBAL.items()}
    inverse_linear = {v: k for k, v in {**_LINEAR, **_NORMS}.items()}
    layer = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unmapped = []
    for key, tensor in state.items():
        if key in inverse_global:
            out[inverse_global[key]] = tensor
            continue
        m = layer.match(key)
        if m is None:
            unmapped.append(key)
        elif m[2] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((m[1], m[3]), {})[m[2][10]] = tensor
        elif m[2] in inverse_linear:
            out[f"model.layers.{m[1]}.{inverse_linear[m[2]]}.{m[3]}"] = tensor
        else:
            unmapped.append(key)
    if unmapped:
        raise ConversionError(
            "cannot place these Llama weights in the InternLM2 layout", unmapped=unmapped
        )
    for (i, suffix), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(
                f"layer {i} lacks some of q/k/v_proj.{suffix}",
                missing=[
                    f"model.layers.{i}.self_attn.{p}_proj.{suffix}" for p in "qkv" if p not in parts
                ],
            )
        out[f"model.layers.{i}.attention.wqkv.{suffix}"] = fuse_wqkv(
            parts["q"], parts["k"], parts["v"], num_heads=num_heads, num_kv_heads=num_kv_heads
        )
    return out
