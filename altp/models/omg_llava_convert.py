"""Read OMG-LLaVA's official files into the parts of :class:`~altp.models.omg_llava.OmgLlava`.

The builder is :func:`altp.models.omg_llava_build.build_omg_llava`; this module checks
the files and reads them (:func:`load_official_parts`).

Upstream's layout (``omg_llava/INSTALL.md``, ``./pretrained/omg_llava/``) plus the
ConvNeXt CLIP weights open_clip would download:

* ``internlm2-chat-7b/`` (``internlm/internlm2-chat-7b``): ``config.json``,
  ``tokenizer.model``, weight shards;
* ``omg_seg_convl.pth``, ``finetuned_gcg.pth`` and
  ``convnext_large_d_320_CocoPanopticOVDataset.pth`` (``zhangtao-whu/OMG-LLaVA``);
* ``open_clip_pytorch_model.bin``
  (``laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup``).

Every file is checked before any is read (one-line
:class:`~altp.models.base.MissingCheckpointError` naming it and its download
command); the strict mapping itself lives in
:mod:`altp.models.omg.official_weights`. The LLM is the LoRA-merged base in the
configured dtype, not upstream's 4-bit NF4 base: every run record says so.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaForCausalLM

from altp.models.checkpoint_files import read_state_dict, require
from altp.models.omg.tokenizer import OmgTokenIds, load_internlm2_tokenizer
from altp.models.omg.visual import OMG_LLAVA_7B, OmgLlavaVisual, OmgVisualConfig

__all__ = [
    "CONVNEXT_REPO", "INTERNLM2_REPO", "OFFICIAL_LLM_WEIGHTS", "OMG_LLAVA_REPO", "OfficialParts", "load_official_parts",
]

log = logging.getLogger(__name__)

OMG_LLAVA_REPO = "zhangtao-whu/OMG-LLaVA"
INTERNLM2_REPO = "internlm/internlm2-chat-7b"
CONVNEXT_REPO = "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
#: What the run record says about the LLM weights of the official model (a deviation).
OFFICIAL_LLM_WEIGHTS = (
    "InternLM2-chat-7B with the finetuned LoRA merged into the {dtype} base; upstream runs the "
    "LoRA on a 4-bit NF4 (bitsandbytes, double quant, fp16 compute) base"
)


def _read_pth(path: Path, *, trust_pickle: bool) -> Any:
    """A ``.pth``/``.bin`` file's contents; tensors only unless ``trust_pickle``."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:  # non-tensor objects (e.g. mmengine metadata)
        raise ValueError(
            f"{path} holds more than tensors and weights_only=True refuses it "
            f"({str(err).splitlines()[0]}); if you trust the file, pass model.trust_pickle=true"
        ) from None


@dataclass(frozen=True)
class OfficialParts:
    """OMG-LLaVA's parts read from the official files, ready for :class:`~altp.models.omg_llava.OmgLlava`."""

    visual: OmgLlavaVisual  # float32, every GCG weight loaded
    llm: LlamaForCausalLM  # the LoRA-merged InternLM2 as Llama, in the requested dtype
    tokenizer: Any
    token_ids: OmgTokenIds


def load_official_parts(
    *,
    internlm2_dir: str,
    omg_seg_ckpt: str,
    finetuned_ckpt: str,
    class_embed: str,
    convnext_ckpt: str,
    dtype: torch.dtype,
    trust_pickle: bool = False,
    visual_config: OmgVisualConfig = OMG_LLAVA_7B,
) -> OfficialParts:
    """Check every official file, then read the tokenizer, the LLM and the visual side.

    Arguments as :func:`altp.models.omg_llava_build.build_omg_llava` (``dtype`` parsed).

    Raises:
        MissingCheckpointError: a file is absent (every file is checked before
            any is read).
        ConversionError: an unmapped or missing key in any file (upstream loads
            with ``strict=False`` and would silently drop it).
    """
    from altp.models.omg.official_weights import llama_from_official, load_official_visual

    folder = Path(internlm2_dir)
    for name in ("config.json", "tokenizer.model"):
        require(folder / name, INTERNLM2_REPO)
    files = {
        "omg_seg": require(Path(omg_seg_ckpt), OMG_LLAVA_REPO, "omg_seg_convl.pth"),
        "finetuned": require(Path(finetuned_ckpt), OMG_LLAVA_REPO, "finetuned_gcg.pth"),
        "class_embed": require(
            Path(class_embed), OMG_LLAVA_REPO, "convnext_large_d_320_CocoPanopticOVDataset.pth"
        ),
        "convnext": require(Path(convnext_ckpt), CONVNEXT_REPO, "open_clip_pytorch_model.bin"),
    }
    tok, ids = load_internlm2_tokenizer(folder)
    internlm2_config = json.loads((folder / "config.json").read_text())
    # read_state_dict checks that every shard exists before it reads one.
    internlm2_state = read_state_dict(folder, repo=INTERNLM2_REPO)
    finetuned = _read_pth(files["finetuned"], trust_pickle=trust_pickle)
    finetuned = finetuned.get("state_dict", finetuned)  # as xtuner's guess_load_checkpoint
    llm_config, llm_state = llama_from_official(internlm2_state, internlm2_config, finetuned, dtype=dtype)
    del internlm2_state
    with torch.device("meta"):  # no random init and no second copy of 7B weights
        llm = LlamaForCausalLM(llm_config)
    llm.load_state_dict(llm_state, strict=True, assign=True)
    # RoPE buffers are computed, not stored: build them for real (float32).
    llm.model.rotary_emb = type(llm.model.rotary_emb)(config=llm_config)
    on_meta = [n for n, t in [*llm.named_parameters(), *llm.named_buffers()] if t.is_meta]
    if on_meta:
        raise RuntimeError(f"LLM tensors not filled by the converted state: {on_meta}")

    class_tensor = _read_pth(files["class_embed"], trust_pickle=trust_pickle)
    omg_seg = _read_pth(files["omg_seg"], trust_pickle=trust_pickle)
    visual = OmgLlavaVisual(config=replace(visual_config, class_prototypes=int(class_tensor.shape[1])))
    unused = load_official_visual(
        visual, open_clip_state=_read_pth(files["convnext"], trust_pickle=trust_pickle),
        omg_seg_state=omg_seg.get("state_dict", omg_seg), finetuned_state=finetuned, class_embed=class_tensor,
    )  # fmt: skip
    log.info("official keys not used by GCG inference: %s", {k: len(v) for k, v in unused.items()})
    return OfficialParts(visual=visual, llm=llm, tokenizer=tok, token_ids=ids)
