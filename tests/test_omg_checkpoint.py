"""Official OMG-LLaVA key layouts -> modules: exact round trip and strict errors."""

from __future__ import annotations

import pytest
import torch

from altp.models.omg.convnext import ConvNeXtTrunk
from altp.models.omg.internlm2_convert import ConversionError
from altp.models.omg.omg_checkpoint import (
    load_strict,
    split_finetuned_checkpoint,
    split_omg_seg_checkpoint,
    trunk_from_open_clip,
)
from altp.models.omg.omg_head import OmgSegHead
from altp.models.omg.pixel_decoder import MSDeformAttnPixelDecoder
from altp.models.omg.projector import OmgLlavaProjector, TextToVisionProjector

LLM_COPY = ("transformer_decoder_llm.", "mask_embed_llm.")


def _head(seed: int) -> OmgSegHead:
    torch.manual_seed(seed)
    pixel = MSDeformAttnPixelDecoder(
        in_channels=(8, 16, 32, 64),
        feat_channels=16,
        out_channels=16,
        num_layers=1,
        num_heads=2,
        num_groups=4,
    )
    return OmgSegHead(
        class_embed=torch.ones(3, 1, 4) / 2,
        feat_channels=16,
        num_queries=5,
        num_layers=2,
        num_heads=2,
        feedforward_channels=8,
        pixel_decoder=pixel,
    )


def _trunk(seed: int) -> ConvNeXtTrunk:
    torch.manual_seed(seed)
    return ConvNeXtTrunk(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))


def _official_files(head, trunk, proj, t2v):
    """Write the modules in upstream's key layouts (omg_seg_convl.pth and finetuned_gcg.pth)."""
    omg_seg = {
        f"panoptic_head.{k}": v for k, v in head.state_dict().items() if not k.startswith(LLM_COPY)
    }
    omg_seg["panoptic_head.mask_tokens.weight"] = torch.zeros(1, 16)  # unused prompt branch
    omg_seg["backbone.head.0.norm.weight"] = torch.zeros(64)
    for k, v in trunk.state_dict().items():
        if k.startswith("stem."):
            omg_seg[f"backbone.{k}"] = v
        else:
            i, rest = k.split(".", 2)[1:]
            omg_seg[f"backbone.layer{int(i) + 1}.{rest}"] = v
    gcg = {
        f"visual_encoder.panoptic_head.{k}": v
        for k, v in head.state_dict().items()
        if k.startswith(LLM_COPY)
    }
    gcg |= {f"projector.model.{k}": v for k, v in proj.state_dict().items()}
    gcg |= {f"projector_text2vision.{k}": v for k, v in t2v.state_dict().items()}
    gcg["llm.base_model.model.model.tok_embeddings.weight"] = torch.zeros(3, 2)
    return omg_seg, gcg


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_round_trip_through_official_layouts():
    head, trunk = _head(0), _trunk(0)
    proj = OmgLlavaProjector(pixel_dims=8, query_dims=4, llm_dims=6)
    t2v = TextToVisionProjector(llm_dims=6, query_dims=4)
    omg_seg, gcg = _official_files(head, trunk, proj, t2v)

    seg_groups = split_omg_seg_checkpoint(omg_seg)
    ft_groups = split_finetuned_checkpoint(gcg)
    assert set(seg_groups["unused"]) == {"mask_tokens.weight", "backbone.head.0.norm.weight"}
    assert list(ft_groups["llm"]) == ["model.tok_embeddings.weight"]

    head2, trunk2 = _head(1), _trunk(1)
    proj2 = OmgLlavaProjector(pixel_dims=8, query_dims=4, llm_dims=6)
    t2v2 = TextToVisionProjector(llm_dims=6, query_dims=4)
    load_strict(head2, seg_groups["head"], what="omg_seg_convl.pth", partial=True)
    load_strict(head2, ft_groups["head_llm"], what="finetuned_gcg.pth", partial=True)
    assert set(seg_groups["head"]) | set(ft_groups["head_llm"]) == set(head2.state_dict())
    load_strict(trunk2, seg_groups["backbone"], what="omg_seg_convl.pth backbone")
    load_strict(proj2, ft_groups["projector"], what="projector")
    load_strict(t2v2, ft_groups["text2vision"], what="projector_text2vision")
    for a, b in ((head, head2), (trunk, trunk2), (proj, proj2), (t2v, t2v2)):
        _same(a, b)


def test_strict_errors_name_the_keys():
    with pytest.raises(ConversionError) as err:
        split_omg_seg_checkpoint(
            {"neck.conv.weight": torch.zeros(1), "panoptic_head.query_feat.weight": torch.zeros(1)}
        )
    assert err.value.unmapped == ["neck.conv.weight"]
    with pytest.raises(ConversionError) as err:
        split_finetuned_checkpoint({"visual_encoder.backbone.x": torch.zeros(1)})
    assert err.value.unmapped == ["visual_encoder.backbone.x"]

    t2v = TextToVisionProjector(llm_dims=6, query_dims=4)
    state = dict(t2v.state_dict())
    with pytest.raises(ConversionError) as err:
        load_strict(t2v, {k: v for k, v in state.items() if k != "model.2.bias"}, what="t")
    assert err.value.missing == ["model.2.bias"]
    with pytest.raises(ConversionError, match="wrong shape"):
        load_strict(t2v, {**state, "model.2.bias": torch.zeros(5)}, what="t")
    with pytest.raises(ConversionError) as err:
        load_strict(t2v, {**state, "model.3.weight": torch.zeros(1)}, what="t", partial=True)
    assert err.value.unmapped == ["model.3.weight"]


def test_trunk_from_open_clip():
    trunk = _trunk(0)
    clip = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    clip |= {
        "visual.trunk.head.norm.weight": torch.zeros(64),
        "visual.head.proj.weight": torch.zeros(2, 2),
    }
    clip["text.token_embedding.weight"] = torch.zeros(2, 2)
    state, skipped = trunk_from_open_clip(clip)
    assert skipped == ["visual.trunk.head.norm.weight"]
    fresh = _trunk(1)
    load_strict(fresh, state, what="open_clip")
    _same(trunk, fresh)
    with pytest.raises(ConversionError, match="visual.trunk"):
        trunk_from_open_clip({"text.x": torch.zeros(1)})
