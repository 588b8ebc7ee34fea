"""Official-checkpoint converter: key names, round trip, loud failures, missing files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from altp.models.base import MissingCheckpointError
from altp.models.checkpoint_files import CheckpointMismatchError, read_state_dict
from altp.models.glamm_build import build_glamm, build_glamm_tiny
from altp.models.glamm_convert import official_key, write_official_checkpoint
from altp.models.tokenizer import TINY_TOKENIZER_DIR

REGION = {"model.region_encoder.mlvl_fuse.input_conv.0.weight": torch.ones(4, 6, 1, 1),
          "model.region_encoder.roi_align.pconvs.0.bias": torch.zeros(4)}
CLIP_TEXT = {"text_model.embeddings.token_embedding.weight": torch.zeros(10, 4), "logit_scale": torch.tensor(2.0),
             "visual_projection.weight": torch.zeros(3, 32), "text_projection.weight": torch.zeros(3, 4)}


def _wb(prefix: str) -> list[str]:
    return [f"{prefix}.weight", f"{prefix}.bias"]


def upstream_keys(*, llm_layers: int, sam_depth: int, decoder_depth: int = 2, mask_tokens: int = 4) -> set[str]:
    """Key names of groundingLMM's GLaMMForCausalLM state dict, enumerated from its module
    definitions (model/SAM/modeling/*.py, model/GLaMM.py, llava_llama.py), without the
    region encoder."""
    keys = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            *_wb("model.mm_projector.0"), *_wb("model.mm_projector.2"),
            *_wb("model.text_hidden_fcs.0.0"), *_wb("model.text_hidden_fcs.0.2")]
    for i in range(llm_layers):
        p = f"model.layers.{i}"
        keys += [f"{p}.self_attn.{n}_proj.weight" for n in "qkvo"]
        keys += [f"{p}.mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
        keys += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight"]
    ie = "model.grounding_encoder.image_encoder"
    keys += [*_wb(f"{ie}.patch_embed.proj"), f"{ie}.pos_embed", f"{ie}.neck.0.weight", *_wb(f"{ie}.neck.1"),
             f"{ie}.neck.2.weight", *_wb(f"{ie}.neck.3")]
    for i in range(sam_depth):
        b = f"{ie}.blocks.{i}"
        keys += [*_wb(f"{b}.norm1"), *_wb(f"{b}.attn.qkv"), *_wb(f"{b}.attn.proj"), f"{b}.attn.rel_pos_h",
                 f"{b}.attn.rel_pos_w", *_wb(f"{b}.norm2"), *_wb(f"{b}.mlp.lin1"), *_wb(f"{b}.mlp.lin2")]
    pe = "model.grounding_encoder.prompt_encoder"
    keys += [f"{pe}.pe_layer.positional_encoding_gaussian_matrix", f"{pe}.not_a_point_embed.weight",
             f"{pe}.no_mask_embed.weight", *[f"{pe}.point_embeddings.{i}.weight" for i in range(4)]]
    keys += [k for i in (0, 1, 3, 4, 6) for k in _wb(f"{pe}.mask_downscaling.{i}")]
    md = "model.grounding_encoder.mask_decoder"
    attn = lambda p: [k for n in "qkv" for k in _wb(f"{p}.{n}_proj")] + _wb(f"{p}.out_proj")  # noqa: E731
    keys += [f"{md}.iou_token.weight", f"{md}.mask_tokens.weight"]
    for i in range(decoder_depth):
        t = f"{md}.transformer.layers.{i}"
        for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            keys += attn(f"{t}.{a}")
        keys += [k for n in range(1, 5) for k in _wb(f"{t}.norm{n}")] + _wb(f"{t}.mlp.lin1") + _wb(f"{t}.mlp.lin2")
    keys += attn(f"{md}.transformer.final_attn_token_to_image") + _wb(f"{md}.transformer.norm_final_attn")
    keys += [k for i in (0, 1, 3) for k in _wb(f"{md}.output_upscaling.{i}")]
    for j in range(mask_tokens):
        keys += [k for i in range(3) for k in _wb(f"{md}.output_hypernetworks_mlps.{j}.layers.{i}")]
    keys += [k for i in range(3) for k in _wb(f"{md}.iou_prediction_head.layers.{i}")]
    return set(keys)


@pytest.fixture(scope="module")
def tiny():
    return build_glamm_tiny(seed=3, num_layers=3)


@pytest.fixture()
def written(tiny, tmp_path):
    ckpt, clip = tmp_path / "ckpt", tmp_path / "clip"
    write_official_checkpoint(tiny, ckpt, clip, extra=REGION, clip_extra=CLIP_TEXT)
    return ckpt, clip


def _build(ckpt: Path, clip: Path, tiny) -> object:
    return build_glamm(checkpoint_dir=str(ckpt), clip_dir=str(clip), tokenizer_dir=str(TINY_TOKENIZER_DIR),
                       dtype="float32", device="cpu", max_new_tokens=8, sam=tiny.config.sam)


def test_official_names_match_upstream_module_layout(tiny):
    ours = {official_key(k) for k in tiny.state_dict() if not k.startswith("vision_tower.")}
    assert ours == upstream_keys(llm_layers=3, sam_depth=2)


def test_written_layout_is_two_bin_shards_with_index(written):
    ckpt, clip = written
    index = json.loads((ckpt / "pytorch_model.bin.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["pytorch_model-00001-of-00002.bin",
                                                         "pytorch_model-00002-of-00002.bin"]
    sd = read_state_dict(ckpt)
    assert "model.region_encoder.mlvl_fuse.input_conv.0.weight" in sd
    assert "model.grounding_encoder.image_encoder.blocks.0.attn.rel_pos_h" in sd
    assert all(k.startswith("vision_model.") or k in CLIP_TEXT or k.startswith("text_model.")
               for k in read_state_dict(clip))


def test_round_trip_gives_identical_weights_and_outputs(tiny, written):
    loaded = _build(*written, tiny)
    a, b = tiny.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    with torch.inference_mode():
        va, vb = (m.encode_image(m.clip_pixels(image)) for m in (tiny, loaded))
        assert torch.equal(va, vb)
        la, lb = (m.llm(inputs_embeds=m.build_inputs_embeds(va)).logits for m in (tiny, loaded))
        assert torch.equal(la, lb)
        states = torch.randn(2, tiny.llm_shape.hidden_size, generator=torch.Generator().manual_seed(0))
        ma, mb = (m.masks_from_states(image, states) for m in (tiny, loaded))
    assert len(ma) == 2 and all(np.array_equal(x, y) for x, y in zip(ma, mb, strict=True))


def _rewrite(ckpt: Path, edit) -> None:
    """Apply ``edit`` to shard 1 in place."""
    shard = ckpt / "pytorch_model-00001-of-00002.bin"
    sd = torch.load(shard, weights_only=True)
    edit(sd)
    torch.save(sd, shard)


def test_unmapped_key_is_reported(tiny, written):
    ckpt, clip = written
    _rewrite(ckpt, lambda sd: sd.update({"model.grounding_encoder.extra_head.weight": torch.zeros(1)}))
    with pytest.raises(CheckpointMismatchError, match=r"1 unmapped: model\.grounding_encoder\.extra_head\.weight"):
        _build(ckpt, clip, tiny)


def test_missing_and_misshaped_keys_are_reported(tiny, written):
    ckpt, clip = written
    sd1 = torch.load(ckpt / "pytorch_model-00001-of-00002.bin", weights_only=True)
    gone, bent = sorted(k for k in sd1 if not k.startswith("model.region"))[:2]

    def edit(sd):
        del sd[gone]
        sd[bent] = torch.zeros(7, 7, 7)

    _rewrite(ckpt, edit)
    with pytest.raises(CheckpointMismatchError) as err:
        _build(ckpt, clip, tiny)
    msg = str(err.value)
    assert f"1 missing: {gone}" in msg and f"1 shape mismatch: {bent} (7, 7, 7)" in msg


def test_clip_text_side_is_ignored_but_unknown_clip_keys_fail(tiny, written):
    ckpt, clip = written
    from safetensors.torch import load_file, save_file

    sd = load_file(str(clip / "model.safetensors"))
    sd["vision_model.extra.weight"] = torch.zeros(1)
    save_file(sd, str(clip / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"CLIP checkpoint .* 1 unmapped: vision_model\.extra\.weight"):
        _build(ckpt, clip, tiny)


def _rope_oracle(llm: dict, *, theta_scale: float = 1.0) -> torch.Tensor:
    """LLaMA's RoPE frequencies 1 / theta^(2i/d), in float64, from the LLM config alone."""
    d = llm["hidden_size"] // llm["num_attention_heads"]
    theta = float(llm.get("rope_theta", 10000.0)) * theta_scale
    return 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)


def _store_inv_freq(ckpt: Path, inv: torch.Tensor, layers: int = 3) -> None:
    """Put ``inv`` (as is, dtype included) under every layer's rotary_emb.inv_freq, as old transformers saved it."""
    _rewrite(ckpt, lambda sd: sd.update(
        {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv.clone() for i in range(layers)}))


@pytest.mark.parametrize("stored_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_inv_freq_stored_in_half_precision_is_accepted_and_never_loaded(tiny, written, stored_dtype):
    ckpt, clip = written
    oracle = _rope_oracle(tiny.config.llm)
    stored = oracle.to(stored_dtype)  # upstream merges and saves in bf16
    if stored_dtype == torch.bfloat16:  # bf16 rounding exceeds the 1e-3 a plain rtol allowed
        assert float(((stored.double() - oracle).abs() / oracle).max()) > 3e-3
    _store_inv_freq(ckpt, stored)
    for dtype in ("float32", "bfloat16"):
        loaded = build_glamm(checkpoint_dir=str(ckpt), clip_dir=str(clip), tokenizer_dir=str(TINY_TOKENIZER_DIR),
                             dtype=dtype, device="cpu", max_new_tokens=8, sam=tiny.config.sam)
        inv = loaded.llm.model.rotary_emb.inv_freq
        assert inv.dtype == torch.float32  # the recomputed fp32 values, not the stored ones
        assert torch.allclose(inv.double(), oracle, rtol=1e-6, atol=0)
        assert torch.equal(inv, tiny.llm.model.rotary_emb.inv_freq)


def _bf16_ulps_up(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x`` (positive bf16) moved up by ``n`` units in the last place."""
    return (x.view(torch.int16) + n).view(torch.bfloat16)


@pytest.mark.parametrize(("label", "make", "match"), [
    ("rope_theta 1% off", lambda llm: _rope_oracle(llm, theta_scale=1.01).to(torch.bfloat16), "ulp of that dtype"),
    ("two bf16 ulps off", lambda llm: _bf16_ulps_up(_rope_oracle(llm).to(torch.bfloat16), 2), "ulp of that dtype"),
    ("doubled", lambda llm: (_rope_oracle(llm) * 2).to(torch.bfloat16), "check rope_theta / head_dim"),
    ("another head_dim", lambda llm: _rope_oracle(llm)[:-1].to(torch.bfloat16),
     r"\(7,\), the model's RoPE frequencies are float \(8,\)"),
])
def test_wrong_inv_freq_is_refused_in_one_line(tiny, written, label, make, match):
    ckpt, clip = written
    _store_inv_freq(ckpt, make(tiny.config.llm))
    with pytest.raises(CheckpointMismatchError, match=match) as err:
        _build(ckpt, clip, tiny)
    assert "\n" not in str(err.value) and "rotary_emb.inv_freq" in str(err.value), label


def _one_line_missing(err: MissingCheckpointError, repo: str, path: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert f"hf download {repo} --local-dir" in msg
    assert path in msg


def test_missing_checkpoint_raises_one_line_error(tmp_path):
    with pytest.raises(MissingCheckpointError) as err:
        build_glamm(checkpoint_dir=str(tmp_path / "nope"), clip_dir=str(tmp_path / "clip"), dtype="float32",
                    device="cpu")
    assert isinstance(err.value, FileNotFoundError)
    _one_line_missing(err.value, "MBZUAI/GLaMM-GCG", str(tmp_path / "nope" / "config.json"))


def test_missing_clip_and_missing_shard_name_the_file(tiny, written):
    ckpt, clip = written
    (ckpt / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(MissingCheckpointError) as err:
        _build(ckpt, clip, tiny)
    _one_line_missing(err.value, "MBZUAI/GLaMM-GCG", "pytorch_model-00002-of-00002.bin")
    with pytest.raises(MissingCheckpointError) as err:
        _build(ckpt, clip.parent / "no_clip", tiny)
    _one_line_missing(err.value, "openai/clip-vit-large-patch14-336", "no_clip")


def test_model_configs_instantiate_and_fail_in_one_line(monkeypatch, tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    monkeypatch.setenv("GLAMM_CKPT", str(tmp_path / "ckpt"))
    monkeypatch.setenv("ALTP_DEVICE", "cpu")
    with pytest.raises(InstantiationException) as err:
        instantiate(OmegaConf.load(conf / "glamm.yaml"))
    assert isinstance(err.value.__cause__, MissingCheckpointError)
    _one_line_missing(err.value.__cause__, "MBZUAI/GLaMM-GCG", str(tmp_path / "ckpt" / "config.json"))
    tiny = instantiate(OmegaConf.load(conf / "glamm_tiny.yaml"))
    assert (tiny.name, tiny.num_visual, tiny.max_new_tokens, str(tiny.device)) == ("glamm_tiny", 576, 32, "cpu")


def test_full_size_layout_matches_glamm_gcg_shapes():
    """GLaMM-GCG at full size on the meta device (no memory): upstream key set and SAM ViT-H /
    Vicuna-7B / CLIP-L shapes as build_sam_vit_h and the checkpoint define them."""
    from altp.models.glamm import GLaMM, GLaMMConfig
    from altp.models.tokenizer import load_glamm_tokenizer

    tok, ids = load_glamm_tokenizer(TINY_TOKENIZER_DIR)
    with torch.device("meta"):
        model = GLaMM(config=GLaMMConfig(), tokenizer=tok, token_ids=ids)
    sd = model.state_dict()
    official = {official_key(k): tuple(v.shape) for k, v in sd.items() if not k.startswith("vision_tower.")}
    assert set(official) == upstream_keys(llm_layers=32, sam_depth=32)
    g = "model.grounding_encoder."
    expected = {
        "model.embed_tokens.weight": (32007, 4096), "lm_head.weight": (32007, 4096),
        "model.layers.0.mlp.gate_proj.weight": (11008, 4096),
        "model.mm_projector.0.weight": (4096, 1024), "model.text_hidden_fcs.0.2.weight": (256, 4096),
        g + "image_encoder.pos_embed": (1, 64, 64, 1280),
        g + "image_encoder.patch_embed.proj.weight": (1280, 3, 16, 16),
        g + "image_encoder.blocks.7.attn.rel_pos_h": (127, 80),  # global attention block (64x64)
        g + "image_encoder.blocks.0.attn.rel_pos_h": (27, 80),  # 14x14 window block
        g + "image_encoder.neck.0.weight": (256, 1280, 1, 1),
        g + "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
        g + "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
        g + "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight": (128, 256),
        g + "mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
        g + "mask_decoder.output_hypernetworks_mlps.0.layers.2.weight": (32, 256),
        g + "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
    }
    assert {k: official[k] for k in expected} == expected
    assert tuple(sd["vision_tower.embeddings.position_embedding.weight"].shape) == (577, 1024)
    assert (model.num_visual, model.grid) == (576, (24, 24))
