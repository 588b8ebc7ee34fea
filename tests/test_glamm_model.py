"""Tiny GLaMM: preprocessing oracles, mask post-processing, [SEG] states, cached == uncached."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from altp.models.base import GCGModel, GCGPrediction
from altp.models.glamm import clip_resize_crop
from altp.models.glamm_build import build_glamm_tiny
from altp.models.sam import postprocess_masks

NEW = 8  # new tokens per test generation: several decode steps, fast on CPU
LAYERS = 8  # the tests need decoding and pruning stages, not GLaMM's 32 layers


@pytest.fixture(scope="module")
def tiny():
    return build_glamm_tiny(seed=0, num_layers=LAYERS)


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8))


# -- preprocessing -------------------------------------------------------------------------------
def test_clip_crop_keeps_the_middle_of_the_long_side():
    rgb = np.zeros((336, 1008, 3), np.uint8)
    rgb[:, :336, 0] = 255
    rgb[:, 336:672, 1] = 255
    rgb[:, 672:, 2] = 255
    for arr in (rgb, rgb.transpose(1, 0, 2)):  # landscape and portrait: short side already 336, no resize
        out = clip_resize_crop(Image.fromarray(np.ascontiguousarray(arr)), 336)
        assert out.shape == (336, 336, 3) and out.dtype == np.uint8
        assert (out == [0, 255, 0]).all()


def test_clip_resize_crop_equals_transformers_clip_processor(image):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                 do_rescale=False, do_normalize=False)
    want = proc(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    assert np.array_equal(clip_resize_crop(image, 336), want)


def test_clip_input_is_the_clip_processors_normalised_pixels(tiny, image):
    # preprocess sends uint8; the model normalises on its side. Oracle: transformers' own CLIP processor.
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                 image_mean=[0.48145466, 0.4578275, 0.40821073],
                                 image_std=[0.26862954, 0.26130258, 0.27577711])
    want = torch.from_numpy(proc(image, return_tensors="np")["pixel_values"])
    got = tiny.clip_input([tiny.preprocess(image)])
    assert got.shape == want.shape == (1, 3, 336, 336)
    assert torch.allclose(got, want.float(), atol=1e-5)


def test_sam_pixels_cross_as_uint8_and_normalise_to_preprocess(tiny, image):
    x = tiny.preprocess(image)
    sam = x.pixels["sam"]
    assert sam.dtype == np.uint8 and max(sam.shape[:2]) == tiny.grounding_encoder.config.image_size
    want, hw = tiny.grounding_encoder.preprocess(image)
    assert hw == sam.shape[:2] and torch.equal(tiny.grounding_encoder.normalise(sam), want)


def test_sam_preprocess_resizes_longest_side_normalises_and_pads(tiny):
    white = Image.new("RGB", (400, 300), (255, 255, 255))
    x, hw = tiny.grounding_encoder.preprocess(white)
    assert hw == (192, 256)  # 300 x 400 scaled by 256 / 400
    assert x.shape == (1, 3, 256, 256)
    want = (255 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    assert torch.allclose(x[0, :, :192, :], want.view(3, 1, 1).expand(3, 192, 256))
    assert (x[0, :, 192:, :] == 0).all()


def test_mask_postprocess_crops_padding_then_resizes_hand_computed():
    # Low-res 4x4 logits: +1 in columns 0-1, -1 in columns 2-3. Bilinear x2 (align_corners=False)
    # gives columns [1, 1, 1, .5, -.5, -1, -1, -1]; crop to the 6x8 unpadded area; resize to 3x4
    # (an exact 2x2 average): columns [1, .75, -.75, -1].
    low = torch.tensor([[1.0, 1.0, -1.0, -1.0]]).expand(4, 4).unsqueeze(0)
    out = postprocess_masks(low, image_size=8, input_hw=(6, 8), original_hw=(3, 4))
    assert out.shape == (1, 3, 4)
    assert torch.allclose(out[0], torch.tensor([1.0, 0.75, -0.75, -1.0]).expand(3, 4))
    # the crop keeps the top-left (padding is bottom/right): a row ramp survives as rows 0..5
    ramp = torch.arange(8.0).view(8, 1).expand(8, 8).unsqueeze(0)
    cropped = postprocess_masks(ramp, image_size=8, input_hw=(6, 5), original_hw=(6, 5))
    assert torch.equal(cropped[0], ramp[0, :6, :5])


# -- the model -----------------------------------------------------------------------------------
def test_tiny_model_is_glamm_shaped_and_seeded():
    a, b, c = build_glamm_tiny(seed=0), build_glamm_tiny(seed=0), build_glamm_tiny(seed=1)
    assert isinstance(a, GCGModel)
    assert (a.num_visual, a.grid, a.llm_shape.num_layers) == (576, (24, 24), 32)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["llm.lm_head.weight"], sc["llm.lm_head.weight"])


def test_vision_image_is_what_clip_sees(tiny, image):
    pix = tiny.vision_image(image)
    assert pix.shape == (336, 336, 3) and pix.dtype == np.uint8
    x = tiny.clip_pixels(image)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    assert torch.allclose(x[0], (torch.from_numpy(pix).permute(2, 0, 1) / 255.0 - mean) / std, atol=1e-6)


def test_predict_returns_a_consistent_prediction(tiny, image):
    out = tiny.predict(image, pruner=None, prep=None, max_new_tokens=NEW)
    assert isinstance(out, GCGPrediction)
    assert 1 <= out.new_tokens <= NEW
    assert out.num_visual == 576 and out.num_text_tokens == len(tiny.prefix_ids) + len(tiny.suffix_ids)
    assert set(out.timings) == {"vision_ms", "prefill_ms", "decode_ms", "mask_ms", "total_ms", "batch_size"}
    assert all(m.shape == (90, 120) and m.dtype == bool for m in out.masks)


SCRIPT = "<p>A red circle</p>[SEG] on the left."


@pytest.fixture(scope="module")
def scripted():
    return build_glamm_tiny(seed=2, script=SCRIPT, num_layers=LAYERS)


def test_scripted_tiny_model_answers_the_script_with_one_mask(scripted):
    for seed, size in ((0, (40, 64)), (1, (70, 50))):
        img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))
        out = scripted.predict(img, pruner=None, prep=None, max_new_tokens=16)
        assert (out.caption, out.phrases, len(out.masks)) == ("A red circle on the left.", ["A red circle"], 1)
        assert out.masks[0].shape == size and out.new_tokens == 11  # 10 script tokens + EOS


def test_script_with_a_repeated_token_is_refused():
    with pytest.raises(ValueError, match="repeats a token"):
        build_glamm_tiny(seed=0, script="<p>red</p>[SEG] and <p>blue</p>[SEG]")


def _generate_tokens(model, img, **kw) -> list[int]:
    from altp.pruning.engine import PruningEngine

    pruner = kw.pop("pruner", None)
    prep = None if pruner is None else pruner.prepare(model.vision_image(img), model.grid)
    with torch.inference_mode():
        embeds = model.build_inputs_embeds(model.encode_image(model.clip_pixels(img)))
        out = PruningEngine(lm=model.llm, pruner=pruner).generate(
            inputs_embeds=embeds, visual_start=len(model.prefix_ids), num_visual=576, grid=(24, 24), prep=[prep],
            max_new_tokens=NEW, eos_token_id=model.token_ids.eos, use_cache=kw.pop("use_cache", True), seed=0)
    return out.tokens[0].tolist()


def test_seg_states_are_the_states_before_each_seg_token(scripted):
    model, img = scripted, Image.new("RGB", (64, 48), (10, 200, 30))
    pred = model.predict(img, pruner=None, prep=None, max_new_tokens=NEW)
    tokens = _generate_tokens(model, img)
    seg_pos = [i for i, t in enumerate(tokens) if t == model.token_ids.seg]
    assert seg_pos, "the forced model should emit [SEG]"
    assert len(pred.masks) == len(seg_pos)
    # Oracle: one uncached forward over prompt + generated tokens; the state that produced
    # generated token i sits at absolute position (prompt length + i - 1).
    with torch.inference_mode():
        embeds = model.build_inputs_embeds(model.encode_image(model.clip_pixels(img)))
        gen = model.llm.get_input_embeddings()(torch.tensor([tokens]))
        hidden = model.llm.model(inputs_embeds=torch.cat([embeds, gen], 1)).last_hidden_state[0]
        states = hidden[[embeds.shape[1] + i - 1 for i in seg_pos]]
        want = model.masks_from_states(img, states)
    assert all(np.array_equal(a, b) for a, b in zip(pred.masks, want, strict=True))


def test_cached_and_uncached_decoding_agree_unpruned(tiny, image):
    assert _generate_tokens(tiny, image, use_cache=True) == _generate_tokens(tiny, image, use_cache=False)


@pytest.mark.parametrize("name", ["fastv", "pdrop", "altp"])
def test_cached_and_uncached_decoding_agree_pruned(tiny, image, name):
    from altp.pruners import build_pruner

    # PDrop's default lambda solver cannot reach keep=0.25's FLOPs; fix lambda as in its paper
    pruner = build_pruner(name, keep=0.25, **({"lambda_": 0.5} if name == "pdrop" else {}))
    assert _generate_tokens(tiny, image, pruner=pruner, use_cache=True) == _generate_tokens(
        tiny, image, pruner=pruner, use_cache=False)


def test_per_step_fastv_picks_the_uncached_path_by_itself(tiny, image):
    from baselines.fastv import FastVPruner

    pruner = FastVPruner(keep=0.25, reselect="per_step")
    auto = tiny.predict(image, pruner=pruner, prep=None, max_new_tokens=NEW)
    explicit = tiny.predict(image, pruner=pruner, prep=None, max_new_tokens=NEW, use_cache=False)
    assert (auto.caption, auto.phrases) == (explicit.caption, explicit.phrases)
    assert auto.record.kept_tokens == explicit.record.kept_tokens
    assert auto.record.extras[0]["reselect_steps"] == auto.new_tokens
    with pytest.raises(ValueError, match="use_cache=False"):
        tiny.predict(image, pruner=pruner, prep=None, max_new_tokens=NEW, use_cache=True)


def test_visual_tokens_are_penultimate_clip_layer_without_cls(tiny, image):
    # Oracle: run CLIP's layers by hand; GLaMM takes the output of layer L-1 (select_layer -2),
    # drops the CLS token, then the 2-layer GELU projector.
    tower = tiny.vision_tower.vision_model if hasattr(tiny.vision_tower, "vision_model") else tiny.vision_tower
    with torch.inference_mode():
        x = tiny.clip_pixels(image)
        h = tower.pre_layrnorm(tower.embeddings(x))
        for layer in tower.encoder.layers[:-1]:
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
        proj = tiny.mm_projector
        want = proj[2](torch.nn.functional.gelu(proj[0](h[:, 1:])))
        got = tiny.encode_image(x)
    assert got.shape == (1, 576, tiny.llm_shape.hidden_size)
    assert torch.allclose(got, want, atol=1e-5)


def test_pruned_predict_keeps_floor_keep_times_576_and_still_grounds(scripted):
    from altp.pruners import build_pruner

    pruner = build_pruner("fastv", keep=0.1)
    img = Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    out = scripted.predict(img, pruner=pruner, prep=pruner.prepare(scripted.vision_image(img), scripted.grid))
    assert out.record.kept_per_stage == [57] and len(out.record.kept_tokens[0]) == 57
    assert out.phrases == ["A red circle"] and len(out.masks) == 1


def test_rope_frequencies_stay_float32_under_a_bf16_cast():
    model = build_glamm_tiny(seed=0)
    rope = model.llm.model.rotary_emb
    before = rope.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert rope.inv_freq.dtype == torch.float32  # a bf16 inv_freq would be off by up to a radian at ~600
    assert torch.equal(rope.inv_freq, before)
