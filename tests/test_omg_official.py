"""A tiny OMG-LLaVA written in every official layout (open_clip trunk, omg_seg_convl.pth,
finetuned checkpoint with peft LoRA + resized vocab, InternLM2 fused wqkv) reloads to
the same model."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from altp.models.omg.internlm2_chat import llama_config_from_internlm2
from altp.models.omg.internlm2_convert import ConversionError
from altp.models.omg.official_weights import (
    llama_from_official,
    load_official_visual,
    write_official_layouts,
)
from altp.models.omg.visual import OMG_LLAVA_TINY, OmgLlavaVisual

CFG = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 128,
    "rope_theta": 1000000,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "vocab_size": 40,
    "bias": False,
}


def _visual(seed: int) -> OmgLlavaVisual:
    torch.manual_seed(seed)
    model = OmgLlavaVisual(config=OMG_LLAVA_TINY).eval()
    for p in model.parameters():  # no parameter may keep a coincidental default value
        torch.nn.init.normal_(p, std=0.1)
    return model


@pytest.fixture(scope="module")
def files():
    visual = _visual(0)
    class_embed = torch.nn.functional.normalize(torch.randn(5, 1, 8), dim=-1)
    visual.set_class_embed(class_embed)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(llama_config_from_internlm2(CFG, vocab_size=45)).double().eval()
    written = write_official_layouts(
        visual, llama.state_dict(), num_heads=4, num_kv_heads=2, base_vocab=40, lora_rank=3
    )
    return visual, class_embed, llama, written


@torch.inference_mode()
def test_visual_reloads_identically(files):
    visual, class_embed, _, w = files
    fresh = _visual(1)
    skipped = load_official_visual(
        fresh,
        open_clip_state=w["open_clip"],
        omg_seg_state=w["omg_seg"],
        finetuned_state=w["finetuned"],
        class_embed=class_embed,
    )
    assert skipped == {"open_clip": [], "omg_seg": []}
    a, b = visual.state_dict(), fresh.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 3, 128, 128)
    ea, eb = visual.encode(x), fresh.encode(x)
    assert torch.equal(ea.tokens.pixel_tokens, eb.tokens.pixel_tokens)
    assert torch.equal(ea.panoptic.mask_cls, eb.panoptic.mask_cls)


@torch.inference_mode()
def test_llm_reloads_to_the_same_logits(files):
    _, _, llama, w = files
    assert any(".lora_A.default.weight" in k for k in w["finetuned"])
    assert (
        w["internlm2"]["model.tok_embeddings.weight"].shape[0] == 40
    )  # base vocab, resized in the overlay
    config, state = llama_from_official(w["internlm2"], CFG, w["finetuned"])
    assert config.vocab_size == 45
    again = LlamaForCausalLM(config).double().eval()
    again.load_state_dict(state, strict=True)
    ids = torch.tensor([[1, 44, 7, 3, 42, 9]])
    torch.testing.assert_close(again(ids).logits, llama(ids).logits, rtol=1e-9, atol=1e-9)


def test_a_head_weight_no_file_provides_is_an_error(files):
    _, class_embed, _, w = files
    omg_seg = {k: v for k, v in w["omg_seg"].items() if k != "panoptic_head.query_feat.weight"}
    with pytest.raises(ConversionError) as err:
        load_official_visual(
            _visual(2),
            open_clip_state=w["open_clip"],
            omg_seg_state=omg_seg,
            finetuned_state=w["finetuned"],
            class_embed=class_embed,
        )
    assert err.value.missing == ["query_feat.weight"]
