"""Read the official GLaMM-GCG checkpoint (and CLIP) into :class:`GLaMM`; write that layout back.

The builder is :func:`altp.models.glamm_build.build_glamm`; this module gives it the
sizes of a download (:func:`official_config`) and its weights (:func:`load_official_weights`).

Official layout (``MBZUAI/GLaMM-GCG``, saved by groundingLMM's ``GLaMMForCausalLM``):
``model.embed_tokens``, ``model.layers.*``, ``model.norm``, ``lm_head``,
``model.mm_projector.{0,2}``, ``model.text_hidden_fcs.0.{0,2}``,
``model.grounding_encoder.{image_encoder,prompt_encoder,mask_decoder}.*``
(segment-anything names) and ``model.region_encoder.*`` (unused for GCG,
ignored). Old transformers also saved ``model.layers.*.self_attn.rotary_emb.inv_freq``,
in the checkpoint's dtype (bf16 for GLaMM): those are accepted only if they equal
the model's own fp32 RoPE frequencies up to that dtype's rounding, and never
loaded (the model keeps its fp32 values). CLIP
comes from ``openai/clip-vit-large-patch14-336`` (``vision_model.*``; its text
side is ignored).

The mapping is defined once, ours -> official (:func:`official_key`), and
inverted for loading, so the writer and the loader cannot drift apart. Every
unmapped or missing key and every shape mismatch is reported in one error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from altp.models.checkpoint_files import (
    CheckpointMismatchError,
    read_json,
    read_state_dict,
    weight_files,
)
from altp.models.glamm import GLaMM, GLaMMConfig
from altp.models.sam import GroundingEncoderConfig

__all__ = [
    "CLIP_REPO",
    "GLAMM_REPO",
    "clip_key",
    "load_official_weights",
    "official_config",
    "official_key",
    "write_official_checkpoint",
]

GLAMM_REPO = "MBZUAI/GLaMM-GCG"
CLIP_REPO = "openai/clip-vit-large-patch14-336"
_IGNORED_GLAMM = re.compile(r"^model\.region_encoder\.")
_INV_FREQ = re.compile(r"^model\.layers\.(\d+)\.self_attn\.rotary_emb\.inv_freq$")
# CLIPModel keys that CLIPVisionModel does not use.
_IGNORED_CLIP = re.compile(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$|vision_model\.embeddings\.position_ids$)")


def _sub(pattern: str, repl: str | Callable[[re.Match[str]], str]) -> tuple[re.Pattern[str], Any]:
    return re.compile(pattern), repl


def _hyper(m: re.Match[str]) -> str:
    # SamFeedForward(depth 3): proj_in, layers.0, proj_out  <->  MLP.layers.0, .1, .2
    idx = {"proj_in": "0", "layers.0": "1", "proj_out": "2"}[m.group(2)]
    return f"mask_decoder.{m.group(1)}.layers.{idx}."


# transformers' SAM names -> segment-anything names (first match wins).
_SAM_RULES = [
    _sub(r"^image_encoder\.patch_embed\.projection\.", "image_encoder.patch_embed.proj."),
    _sub(r"^image_encoder\.layers\.(\d+)\.layer_norm([12])\.", r"image_encoder.blocks.\1.norm\2."),
    _sub(r"^image_encoder\.layers\.(\d+)\.", r"image_encoder.blocks.\1."),
    _sub(r"^image_encoder\.neck\.conv1\.", "image_encoder.neck.0."),
    _sub(r"^image_encoder\.neck\.layer_norm1\.", "image_encoder.neck.1."),
    _sub(r"^image_encoder\.neck\.conv2\.", "image_encoder.neck.2."),
    _sub(r"^image_encoder\.neck\.layer_norm2\.", "image_encoder.neck.3."),
    _sub(r"^prompt_encoder\.shared_embedding\.positional_embedding$",
         "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    _sub(r"^prompt_encoder\.point_embed\.", "prompt_encoder.point_embeddings."),
    _sub(r"^prompt_encoder\.mask_embed\.conv1\.", "prompt_encoder.mask_downscaling.0."),
    _sub(r"^prompt_encoder\.mask_embed\.layer_norm1\.", "prompt_encoder.mask_downscaling.1."),
    _sub(r"^prompt_encoder\.mask_embed\.conv2\.", "prompt_encoder.mask_downscaling.3."),
    _sub(r"^prompt_encoder\.mask_embed\.layer_norm2\.", "prompt_encoder.mask_downscaling.4."),
    _sub(r"^prompt_encoder\.mask_embed\.conv3\.", "prompt_encoder.mask_downscaling.6."),
    _sub(r"^mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.", r"mask_decoder.transformer.layers.\1.norm\2."),
    _sub(r"^mask_decoder\.transformer\.layer_norm_final_attn\.", "mask_decoder.transformer.norm_final_attn."),
    _sub(r"^mask_decoder\.upscale_conv1\.", "mask_decoder.output_upscaling.0."),
    _sub(r"^mask_decoder\.upscale_layer_norm\.", "mask_decoder.output_upscaling.1."),
    _sub(r"^mask_decoder\.upscale_conv2\.", "mask_decoder.output_upscaling.3."),
    _sub(r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.(proj_in|layers\.0|proj_out)\.", _hyper),
]
_TOP_RULES = [
    _sub(r"^llm\.model\.", "model."),
    _sub(r"^llm\.lm_head\.", "lm_head."),
    _sub(r"^mm_projector\.", "model.mm_projector."),
    _sub(r"^text_hidden_fcs\.", "model.text_hidden_fcs.0."),  # upstream: ModuleList([Sequential(...)])
]


def _apply(rules: Iterable[tuple[re.Pattern[str], Any]], key: str) -> str | None:
    for pattern, repl in rules:
        if pattern.search(key):
            return pattern.sub(repl, key, count=1)
    return None


def official_key(key: str) -> str:
    """Our state-dict key -> the official GLaMM checkpoint key (not for ``vision_tower.*``)."""
    if key.startswith("grounding_encoder."):
        sub = key.removeprefix("grounding_encoder.")
        return "model.grounding_encoder." + (_apply(_SAM_RULES, sub) or sub)
    out = _apply(_TOP_RULES, key)
    if out is None:
        raise KeyError(f"no official name for {key!r}; add a rule to _TOP_RULES in {__name__}")
    return out


def clip_key(key: str) -> str:
    """Our ``vision_tower.*`` key -> the CLIP checkpoint key (``vision_model.*``)."""
    if not key.startswith("vision_tower."):
        raise KeyError(f"{key!r} is not a vision_tower key")
    return "vision_model." + key.removeprefix("vision_tower.")


# -- checking and loading ------------------------------------------------------------------------
def _report(what: str, unmapped: list[str], missing: list[str], bad_shape: list[str]) -> None:
    if not (unmapped or missing or bad_shape):
        return
    parts = []
    for label, keys in (("unmapped", unmapped), ("missing", missing), ("shape mismatch", bad_shape)):
        if keys:
            shown = ", ".join(sorted(keys)[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
            parts.append(f"{len(keys)} {label}: {shown}")
    raise CheckpointMismatchError(f"{what} does not match the model: " + "; ".join(parts))


def _match(what: str, ckpt: dict[str, torch.Tensor], expected: dict[str, str],
           ours: dict[str, torch.Tensor], ignore: re.Pattern[str]) -> dict[str, torch.Tensor]:
    """Official-keyed tensors -> our keys; raises on any unmapped / missing / mis-shaped key."""
    unmapped = [k for k in ckpt if k not in expected and not ignore.search(k)]
    missing = [k for k in expected if k not in ckpt]
    bad = [f"{k} {tuple(ckpt[k].shape)} vs {tuple(ours[v].shape)}" for k, v in expected.items()
           if k in ckpt and tuple(ckpt[k].shape) != tuple(ours[v].shape)]
    _report(what, unmapped, missing, bad)
    return {v: ckpt[k] for k, v in expected.items()}


def _ulps_off(stored: torch.Tensor, recomputed: torch.Tensor) -> float:
    """Largest |stored - recomputed| in units in the last place of ``stored``'s dtype at each value.

    ``recomputed`` is fp32. A value rounded to the nearest bf16/fp16 is at most 0.5 ulp
    off; 1 ulp still allows a tie that rounded the other way after the fp32 value was
    computed on another device. The floor of 1e-6 relative covers fp32-stored values
    whose last bits differ for the same reason.
    """
    info = torch.finfo(stored.dtype)
    _, exponent = torch.frexp(recomputed.abs())  # |x| = m * 2**exponent, m in [0.5, 1)
    ulp = torch.ldexp(torch.full_like(recomputed, info.eps), exponent - 1)
    ulp = ulp.clamp_min(info.smallest_normal * info.eps)  # subnormal spacing (fp16 below 6e-5)
    ulp = torch.maximum(ulp, recomputed.abs() * 1e-6)
    return float(((stored.float() - recomputed).abs() / ulp).max())


def _check_inv_freq(ckpt: dict[str, torch.Tensor], model: GLaMM) -> None:
    """Old transformers saved ``rotary_emb.inv_freq``, in the checkpoint's dtype (GLaMM's: bf16).

    Such a buffer is accepted when it equals the model's own fp32 frequencies up to the
    rounding of its dtype (at most 1 ulp, :func:`_ulps_off`), refused otherwise; it is
    never loaded: the model keeps its fp32 values.
    """
    rope = getattr(model.llm.model, "rotary_emb", None)
    for k, stored in ckpt.items():
        if not _INV_FREQ.search(k):
            continue
        if rope is None:
            raise CheckpointMismatchError(f"{k}: the checkpoint has RoPE buffers but the model has no rotary embedding")
        recomputed = rope.inv_freq.detach().float().cpu()
        if stored.shape != recomputed.shape or not stored.is_floating_point():
            raise CheckpointMismatchError(
                f"{k} is {stored.dtype} {tuple(stored.shape)}, the model's RoPE frequencies are float "
                f"{tuple(recomputed.shape)}; check head_dim (hidden_size / num_attention_heads)")
        off = _ulps_off(stored.detach().cpu(), recomputed)
        if off > 1.0:
            raise CheckpointMismatchError(
                f"{k} ({stored.dtype}) differs from the model's RoPE frequencies by {off:.3g} ulp of that dtype "
                f"(at most 1 is rounding); check rope_theta / head_dim in config.json")


def load_official_weights(model: GLaMM, checkpoint_dir: str | Path, clip_dir: str | Path) -> None:
    """Copy the official GLaMM shards and the CLIP weights into ``model`` (strict)."""
    ours = model.state_dict()
    glamm_sd = read_state_dict(checkpoint_dir, repo=GLAMM_REPO)
    clip_sd = read_state_dict(clip_dir, repo=CLIP_REPO)
    _check_inv_freq(glamm_sd, model)
    ignore_glamm = re.compile(f"{_IGNORED_GLAMM.pattern}|{_INV_FREQ.pattern}")
    glamm_keys = {official_key(k): k for k in ours if not k.startswith("vision_tower.")}
    clip_keys = {clip_key(k): k for k in ours if k.startswith("vision_tower.")}
    state = _match(f"GLaMM checkpoint {checkpoint_dir}", glamm_sd, glamm_keys, ours, ignore_glamm)
    state.update(_match(f"CLIP checkpoint {clip_dir}", clip_sd, clip_keys, ours, _IGNORED_CLIP))
    model.load_state_dict(state, strict=True)


# -- writing (the round-trip test's "official" checkpoint) ---------------------------------------
def write_official_checkpoint(
    model: GLaMM,
    checkpoint_dir: str | Path,
    clip_dir: str | Path,
    *,
    num_shards: int = 2,
    extra: dict[str, torch.Tensor] | None = None,
    clip_extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save ``model`` in the official layout: GLaMM ``.bin`` shards + index + config.json, CLIP safetensors.

    Args:
        extra: more official-named tensors for the GLaMM shards (e.g. a fake
            ``model.region_encoder.*`` or ``rotary_emb.inv_freq``).
        clip_extra: more CLIP tensors (e.g. ``text_model.*``, ``logit_scale``).
    """
    ckpt, clip = Path(checkpoint_dir), Path(clip_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    clip.mkdir(parents=True, exist_ok=True)
    ours = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    glamm = {official_key(k): v for k, v in ours.items() if not k.startswith("vision_tower.")}
    glamm.update(extra or {})
    keys = sorted(glamm)
    weight_map: dict[str, str] = {}
    for i in range(num_shards):
        name = f"pytorch_model-{i + 1:05d}-of-{num_shards:05d}.bin"
        part = {k: glamm[k].clone() for k in keys[i::num_shards]}
        torch.save(part, ckpt / name)
        weight_map.update({k: name for k in part})
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    llm = dict(model.config.llm)
    (ckpt / "config.json").write_text(json.dumps({
        "architectures": ["GLaMMForCausalLM"], "model_type": "llava", **llm,
        "mm_vision_tower": CLIP_REPO, "mm_vision_select_layer": model.config.select_layer,
        "mm_use_im_start_end": True, "out_dim": model.config.out_dim}, indent=1))
    vision = {clip_key(k): v.clone() for k, v in ours.items() if k.startswith("vision_tower.")}
    vision.update(clip_extra or {})
    save_file(vision, str(clip / "model.safetensors"))
    (clip / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": dict(model.config.clip)}, indent=1))


# -- the sizes of an official download --------------------------------------------------------
_LLAMA_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "hidden_act",
                 "tie_word_embeddings")
_CLIP_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "hidden_act", "layer_norm_eps", "projection_dim", "num_channels")


def official_config(checkpoint_dir: str | Path, clip_dir: str | Path, *, sam: GroundingEncoderConfig) -> GLaMMConfig:
    """The sizes of an official download, from each folder's ``config.json``.

    Every weights file is checked to exist here, before the slow model build.

    Args:
        checkpoint_dir: a download of ``MBZUAI/GLaMM-GCG``.
        clip_dir: a download of ``openai/clip-vit-large-patch14-336``.
        sam: SAM's sizes (the checkpoint stores none).

    Raises:
        MissingCheckpointError: a config or weights file is absent (one-line message
            with the download command).
    """
    ckpt, clip = Path(checkpoint_dir), Path(clip_dir)
    glamm_cfg = read_json(ckpt / "config.json", GLAMM_REPO)
    clip_cfg = read_json(clip / "config.json", CLIP_REPO)
    weight_files(ckpt, GLAMM_REPO)  # fail on missing shards before the slow model build
    weight_files(clip, CLIP_REPO)
    vision = clip_cfg.get("vision_config", clip_cfg)
    return GLaMMConfig(
        clip={k: vision[k] for k in _CLIP_FIELDS if k in vision},
        llm={k: glamm_cfg[k] for k in _LLAMA_FIELDS if k in glamm_cfg},
        sam=sam,
        select_layer=int(glamm_cfg.get("mm_vision_select_layer", -2)),
        out_dim=int(glamm_cfg.get("out_dim", 256)),
    )
