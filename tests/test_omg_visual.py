"""The tiny OMG-LLaVA visual side end to end: 1024 input -> 256 pixel tokens, [SEG] -> 256x256 masks."""

from __future__ import annotations

import time

import pytest
import torch

from altp.models.omg.visual import OMG_LLAVA_TINY, OmgLlavaVisual


@pytest.fixture(scope="module")
def visual() -> OmgLlavaVisual:
    torch.manual_seed(0)
    model = OmgLlavaVisual(config=OMG_LLAVA_TINY).eval()
    cls = torch.nn.functional.normalize(torch.randn(5, 1, 8), dim=-1)
    model.set_class_embed(cls)
    return model


@torch.inference_mode()
def test_tiny_visual_gives_official_token_layout(visual):
    x = torch.randn(1, 3, 1024, 1024)
    t0 = time.perf_counter()
    enc = visual.encode(x)
    elapsed = time.perf_counter() - t0
    tokens = enc.tokens
    assert tokens.pixel_tokens.shape == (1, 256, 64)
    n_obj = tokens.object_tokens[0].shape[0]
    assert 1 <= n_obj <= OMG_LLAVA_TINY.num_queries
    assert tokens.sequence(0).shape == (256 + 1 + n_obj, 64)
    masks = visual.seg_masks(torch.randn(2, 64), enc, torch.tensor([0, 0]))
    assert masks.shape == (2, 1, 256, 256) and torch.isfinite(masks).all()
    assert elapsed < 20, f"tiny visual encode took {elapsed:.1f}s on CPU"


def test_class_embed_validation(visual):
    with pytest.raises(ValueError, match="L2-normalised"):
        visual.set_class_embed(torch.ones(5, 1, 8))
    with pytest.raises(ValueError, match="must be"):
        visual.set_class_embed(torch.ones(4, 1, 8))


@torch.inference_mode()
def test_pixel_decoder_gets_contiguous_stages(visual, monkeypatch):
    # Upstream's backbone returns ``.contiguous()`` stages; channels-last strides left by the
    # ConvNeXt block's permutes make the pixel decoder's 1x1 convolutions round differently.
    seen: list[torch.Tensor] = []
    decoder = visual.head.pixel_decoder
    original = decoder.forward

    def spy(feats):
        seen.extend(feats)
        return original(feats)

    monkeypatch.setattr(decoder, "forward", spy)
    visual.encode(torch.randn(1, 3, 1024, 1024))
    assert len(seen) == 4
    assert all(f.is_contiguous() for f in seen), [f.stride() for f in seen]
