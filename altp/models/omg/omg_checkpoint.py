"""Strict key mapping from OMG-LLaVA's official files to this package's modules.

Upstream loads all of these with ``strict=False`` (``OMGSegVisualEncoder.__init__``,
``OMG_LLaVA.__init__``, ``gcg_omg_seg_llava.py``), so a renamed key silently
keeps its random initialisation. Here every key is either mapped, listed as
known-unused with the reason, or reported; :func:`load_strict` refuses to load
with any unmapped, missing or mis-shaped tensor.

Files and prefixes (see ``docs/omg_llava_port.md`` section 1):

* open_clip ``convnext_large_d_320`` weights: ``visual.trunk.*`` ->
  :class:`~altp.models.omg.convnext.ConvNeXtTrunk`; the rest of CLIP (text
  tower, ``visual.head``, ``visual.trunk.head``) is not used by OMG-LLaVA.
* ``omg_seg_convl.pth`` (``["state_dict"]``): ``panoptic_head.*`` ->
  :class:`~altp.models.omg.omg_head.OmgSegHead`; ``backbone.stem|layer{1-4}.*``
  -> trunk (if present, it overrides open_clip as upstream's later load does).
* ``finetuned_gcg.pth``: ``llm.base_model.model.*`` (InternLM2 overlay, see
  :mod:`~altp.models.omg.internlm2_convert`), ``projector.model.*``,
  ``projector_text2vision.*``, ``visual_encoder.panoptic_head.*`` (the LLM
  decoder copy).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from altp.models.omg.internlm2_convert import OMG_LLAVA_LLM_PREFIX, ConversionError

__all__ = [
    "HEAD_UNUSED",
    "load_strict",
    "split_finetuned_checkpoint",
    "split_omg_seg_checkpoint",
    "trunk_from_open_clip",
]

# Head parameters OMG-LLaVA never uses for GCG: the SAM-style prompt branch
# (Mask2FormerVideoSemSamHead forces enable_box_query=True, so they always exist).
HEAD_UNUSED = ("mask_tokens.", "pb_embedding.", "pos_linear.")
_LAYER = re.compile(r"^backbone\.layer([1-4])\.(.+)$")


def trunk_from_open_clip(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Take ``visual.trunk.*`` (minus timm's classifier ``head.*``) from an open_clip state.

    Returns the trunk state and the skipped trunk keys (for the run record).
    """
    trunk, skipped = {}, []
    for key, value in state.items():
        if not key.startswith("visual.trunk."):
            continue
        sub = key[len("visual.trunk.") :]
        if sub.startswith("head."):
            skipped.append(key)  # timm's classifier norm; OMG-Seg reads the stages only
        else:
            trunk[sub] = value
    if not trunk:
        raise ConversionError(
            "no visual.trunk.* keys: is this the open_clip convnext_large_d_320 file?"
        )
    return trunk, skipped


def split_omg_seg_checkpoint(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Group ``omg_seg_convl.pth``'s ``state_dict`` into ``head``, ``backbone``, ``unused``.

    Raises :class:`ConversionError` listing every key that fits no group.
    """
    groups: dict[str, dict[str, Tensor]] = {"head": {}, "backbone": {}, "unused": {}}
    unmapped = []
    for key, value in state.items():
        if key.startswith("panoptic_head."):
            sub = key[len("panoptic_head.") :]
            groups["unused" if sub.startswith(HEAD_UNUSED) else "head"][sub] = value
        elif key.startswith("backbone.stem."):
            groups["backbone"][key[len("backbone.") :]] = value
        elif (m := _LAYER.match(key)) is not None:
            groups["backbone"][f"stages.{int(m[1]) - 1}.{m[2]}"] = value
        elif key.startswith("backbone.head."):
            groups["unused"][key] = value  # CLIP's pooling head, never run by OMG-LLaVA
        else:
            unmapped.append(key)
    if unmapped:
        raise ConversionError(
            "omg_seg_convl.pth has keys outside backbone/panoptic_head", unmapped=unmapped
        )
    return groups


def split_finetuned_checkpoint(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Group an OMG-LLaVA ``.pth`` into ``llm``, ``projector``, ``text2vision``, ``head_llm``.

    Prefixes are stripped; ``llm`` feeds ``convert_internlm2_to_llama(overlay=...)``.
    """
    prefixes = {
        "llm": OMG_LLAVA_LLM_PREFIX,
        "projector": "projector.model.",
        "text2vision": "projector_text2vision.",
        "head_llm": "visual_encoder.panoptic_head.",
    }
    groups: dict[str, dict[str, Tensor]] = {name: {} for name in prefixes}
    unmapped = []
    for key, value in state.items():
        for name, prefix in prefixes.items():
            if key.startswith(prefix):
                groups[name][key[len(prefix) :]] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ConversionError(
            "the OMG-LLaVA checkpoint has keys this port does not know", unmapped=unmapped
        )
    return groups


def load_strict(
    module: nn.Module, state: Mapping[str, Tensor], *, what: str, partial: bool = False
) -> None:
    """Load ``state`` into ``module`` after checking names and shapes.

    Args:
        what: names the source in the error (e.g. ``"omg_seg_convl.pth panoptic_head"``).
        partial: allow ``module`` keys absent from ``state`` (several files fill
            one module, e.g. the head from ``omg_seg_convl.pth`` and its LLM copy
            from ``finetuned_gcg.pth``); unknown or mis-shaped keys still raise.
    """
    own = module.state_dict()
    unmapped = [k for k in state if k not in own]
    missing = [] if partial else [k for k in own if k not in state]
    if unmapped or missing:
        raise ConversionError(
            f"{what} does not match {type(module).__name__}", unmapped=unmapped, missing=missing
        )
    bad = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if v.shape != own[k].shape
    ]
    if bad:
        raise ConversionError(
            f"{what} has tensors of the wrong shape for {type(module).__name__}: {bad}"
        )
    module.load_state_dict(dict(state), strict=not partial)
