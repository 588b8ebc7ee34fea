"""InternLM2 -> Llama conversion against a direct InternLM2 forward written from the fused layout.

The reference below never calls the converter's split: it reads q/k/v straight
out of the fused ``wqkv`` output the way InternLM2's remote code does
(``(h, gs, d)`` rearrange), applies LoRA *unmerged* (``W x + s * B(A(x))``) and
runs attention, RoPE, RMSNorm and SwiGLU by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from altp.models.omg.internlm2_chat import add_omg_llava_special_tokens, llama_config_from_internlm2
from altp.models.omg.internlm2_convert import (
    ConversionError,
    convert_internlm2_to_llama,
    fuse_wqkv,
    llama_to_internlm2,
    lora_delta,
    split_wqkv,
)

CFG = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 64,
    "rope_theta": 1000000,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "vocab_size": 40,
    "bias": False,
    "hidden_act": "silu",
}
H, HKV, D, E, NL = 4, 2, 8, 32, 2
G = H // HKV
DT = torch.float64
LINEARS = [
    "attention.wqkv",
    "attention.wo",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
]


def _internlm2_weights(seed: int = 0, vocab: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g, dtype=DT) * scale

    sd = {
        "model.tok_embeddings.weight": r(vocab, E, scale=1.0),
        "model.norm.weight": 1 + r(E),
        "output.weight": r(vocab, E),
    }
    for i in range(NL):
        p = f"model.layers.{i}."
        sd[p + "attention.wqkv.weight"] = r(HKV * (G + 2) * D, E)
        sd[p + "attention.wo.weight"] = r(E, H * D)
        sd[p + "feed_forward.w1.weight"] = r(48, E)
        sd[p + "feed_forward.w3.weight"] = r(48, E)
        sd[p + "feed_forward.w2.weight"] = r(E, 48)
        sd[p + "attention_norm.weight"] = 1 + r(E)
        sd[p + "ffn_norm.weight"] = 1 + r(E)
    return sd


def _rms(x, w, eps=1e-5):
    # InternLM2RMSNorm (like LlamaRMSNorm) normalises in float32, then casts back.
    x32 = x.to(torch.float32)
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(x):
    return torch.cat([-x[..., D // 2 :], x[..., : D // 2]], dim=-1)


def _reference_logits(sd, ids, lora=None, alpha=None):
    """InternLM2 forward from the official layout; LoRA applied unmerged."""
    lora = lora or {}

    def lin(name, x):
        y = x @ sd[name + ".weight"].T
        if name in lora:
            a, b = lora[name]
            y = y + (alpha / a.shape[0]) * ((x @ a.T) @ b.T)
        return y

    T = ids.shape[1]
    # float32 angles, as both InternLM2 (float32 inv_freq) and HF Llama compute them.
    inv = 1.0 / (CFG["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    freqs = torch.arange(T, dtype=torch.float32)[:, None] * inv[None]
    ang = torch.cat([freqs, freqs], -1)
    cos, sin = ang.cos().to(DT), ang.sin().to(DT)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = sd["model.tok_embeddings.weight"][ids]
    for i in range(NL):
        p = f"model.layers.{i}."
        h = _rms(x, sd[p + "attention_norm.weight"])
        qkv = lin(p + "attention.wqkv", h).view(*ids.shape, HKV, G + 2, D)
        q = qkv[..., :G, :].reshape(*ids.shape, H, D).transpose(1, 2)  # (B, H, T, D)
        k = qkv[..., G, :].transpose(1, 2)  # (B, HKV, T, D)
        v = qkv[..., G + 1, :].transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        kv_of_head = torch.arange(H) // G  # query head j reads KV head j // G
        s = q @ k[:, kv_of_head].transpose(-1, -2) / math.sqrt(D)
        o = s.masked_fill(~causal, float("-inf")).softmax(-1) @ v[:, kv_of_head]
        x = x + lin(p + "attention.wo", o.transpose(1, 2).reshape(*ids.shape, H * D))
        h = _rms(x, sd[p + "ffn_norm.weight"])
        x = x + lin(
            p + "feed_forward.w2",
            F.silu(lin(p + "feed_forward.w1", h)) * lin(p + "feed_forward.w3", h),
        )
    return lin("output", _rms(x, sd["model.norm.weight"]))


def _llama(state, vocab=None):
    model = LlamaForCausalLM(llama_config_from_internlm2(CFG, vocab_size=vocab)).to(DT).eval()
    model.load_state_dict(state, strict=True)
    return model


def _convert(sd, **kw):
    return convert_internlm2_to_llama(sd, num_layers=NL, num_heads=H, num_kv_heads=HKV, **kw)


IDS = torch.tensor([[3, 17, 5, 9, 0, 33, 21], [1, 2, 3, 4, 5, 6, 7]])


def test_split_wqkv_follows_the_grouped_layout():
    # head_dim 1, rows numbered: groups are [q0 q1 k0 v0 | q2 q3 k1 v1].
    fused = torch.arange(8.0).view(8, 1)
    q, k, v = split_wqkv(fused, num_heads=4, num_kv_heads=2)
    assert q.flatten().tolist() == [0, 1, 4, 5]
    assert k.flatten().tolist() == [2, 6]
    assert v.flatten().tolist() == [3, 7]
    torch.testing.assert_close(fuse_wqkv(q, k, v, num_heads=4, num_kv_heads=2), fused)


def test_split_rejects_inconsistent_heads():
    with pytest.raises(ValueError, match="multiple"):
        split_wqkv(torch.zeros(9, 2), num_heads=4, num_kv_heads=2)


@torch.inference_mode()
def test_converted_llama_matches_direct_internlm2_forward():
    sd = _internlm2_weights()
    got = _llama(_convert(sd))(IDS).logits
    torch.testing.assert_close(got, _reference_logits(sd, IDS), rtol=1e-9, atol=1e-9)


@torch.inference_mode()
def test_lora_overlay_and_resized_vocab_match_unmerged_reference():
    base = _internlm2_weights(seed=1)
    g = torch.Generator().manual_seed(2)
    r, alpha, vocab = 3, 6.0, 43  # scaling 2.0; three added tokens like OMG-LLaVA's resize
    overlay = {
        "model.tok_embeddings.weight": torch.randn(vocab, E, generator=g, dtype=DT),
        "output.base_layer.weight": torch.randn(vocab, E, generator=g, dtype=DT) * 0.2,
    }
    lora = {}
    for name in [f"model.layers.{i}.{m}" for i in range(NL) for m in LINEARS] + ["output"]:
        out_f, in_f = (vocab, E) if name == "output" else base[name + ".weight"].shape
        a = torch.randn(r, in_f, generator=g, dtype=DT) * 0.1
        b = torch.randn(out_f, r, generator=g, dtype=DT) * 0.1
        lora[name] = (a, b)
        overlay[name + ".lora_A.default.weight"] = a
        overlay[name + ".lora_B.default.weight"] = b
    state = _convert(base, overlay=overlay, lora_alpha=alpha)
    ref_sd = {**base, "model.tok_embeddings.weight": overlay["model.tok_embeddings.weight"]}
    ref_sd["output.weight"] = overlay["output.base_layer.weight"]
    ids = IDS.clone()
    ids[0, 2] = 41  # an added token
    got = _llama(state, vocab=vocab)(ids).logits
    torch.testing.assert_close(
        got, _reference_logits(ref_sd, ids, lora, alpha), rtol=1e-9, atol=1e-9
    )


def test_lora_delta_equals_peft_forward():
    g = torch.Generator().manual_seed(3)
    base = torch.nn.Linear(6, 5, bias=False).double()
    a, b = torch.randn(4, 6, generator=g, dtype=DT), torch.randn(5, 4, generator=g, dtype=DT)
    x = torch.randn(7, 6, generator=g, dtype=DT)
    expected = base(x) + (256 / 4) * F.linear(F.linear(x, a), b)  # alpha 256, r 4
    merged = base.weight + lora_delta(a, b, lora_alpha=256)
    torch.testing.assert_close(F.linear(x, merged), expected, rtol=1e-10, atol=1e-10)


def test_lora_merge_happens_in_float32_for_bf16_weights():
    a = torch.full((2, 3), 1e-3, dtype=torch.bfloat16)
    b = torch.full((4, 2), 1e-3, dtype=torch.bfloat16)
    assert lora_delta(a, b, lora_alpha=2).dtype == torch.float32


def test_round_trip_through_official_layout_is_exact():
    model = LlamaForCausalLM(llama_config_from_internlm2(CFG))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    back = _convert(llama_to_internlm2(state, num_heads=H, num_kv_heads=HKV))
    assert set(back) == set(state)
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_strictness_lists_every_bad_key():
    sd = _internlm2_weights()
    extra = {**sd, "model.layers.0.attention.rotary_emb.inv_freq": torch.zeros(4)}
    del extra["model.layers.1.ffn_norm.weight"]
    with pytest.raises(ConversionError) as err:
        _convert(extra)
    assert err.value.unmapped == ["model.layers.0.attention.rotary_emb.inv_freq"]
    assert err.value.missing == ["model.layers.1.ffn_norm.weight"]

    with pytest.raises(ConversionError, match="visual"):
        _convert(sd, overlay={"visual_encoder.foo": torch.zeros(1)})
    a = torch.zeros(2, E, dtype=DT)
    with pytest.raises(ConversionError, match="pairs"):
        _convert(
            sd, overlay={"model.layers.0.attention.wo.lora_A.default.weight": a}, lora_alpha=1.0
        )
    pair = {
        "model.layers.0.attention.wo.lora_A.weight": a,
        "model.layers.0.attention.wo.lora_B.weight": torch.zeros(E, 2, dtype=DT),
    }
    with pytest.raises(ConversionError, match="lora_alpha"):
        _convert(sd, overlay=pair)
    with pytest.raises(ConversionError, match="vocabulary"):
        _convert(sd, overlay={"model.norm.weight": torch.ones(E + 1, dtype=DT)})


def test_llama_config_mapping():
    cfg = llama_config_from_internlm2(CFG, vocab_size=92548)
    assert (cfg.vocab_size, cfg.num_key_value_heads, cfg.head_dim) == (92548, 2, 8)
    assert cfg.rope_parameters["rope_type"] == "dynamic"
    assert cfg.rope_parameters["rope_theta"] == 1e6 and cfg.rope_parameters["factor"] == 2.0
    assert not cfg.tie_word_embeddings and not cfg.attention_bias
    with pytest.raises(ValueError, match="rope_scaling"):
        llama_config_from_internlm2({**CFG, "rope_scaling": {"type": "yarn", "factor": 2.0}})


def test_special_tokens_get_upstream_ids():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "a", "b"])}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")))
    ids = add_omg_llava_special_tokens(tok)
    assert ids == {"[SEG]": 5, "<p>": 6, "</p>": 7, "<region>": 8, "<mark>": 9}
    with pytest.raises(ValueError, match="already has"):
        add_omg_llava_special_tokens(tok)


def test_gcg_prompt_is_the_internlm2_chat_instruction():
    from altp.models.omg.internlm2_chat import GCG_QUESTIONS, gcg_prompt

    assert gcg_prompt() == (
        "<|im_start|>user\n<image>\nCould you please give me a detailed description of the image? "
        "Please respond with interleaved segmentation masks for the corresponding parts of the "
        "answer.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert len(GCG_QUESTIONS) == 6


def test_round_trip_with_attention_bias():
    model = LlamaForCausalLM(llama_config_from_internlm2({**CFG, "bias": True}))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert "model.layers.0.self_attn.q_proj.bias" in state
    official = llama_to_internlm2(state, num_heads=H, num_kv_heads=HKV)
    assert official["model.layers.1.attention.wqkv.bias"].shape == (HKV * (G + 2) * D,)
    back = convert_internlm2_to_llama(
        official, num_layers=NL, num_heads=H, num_kv_heads=HKV, bias=True
    )
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
