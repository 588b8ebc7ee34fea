"""The embedded default: a small GLaMM trained here on the synthetic shapes benchmark.

Same class and code path as ``model=glamm`` (:class:`altp.models.glamm.GLaMM`):
CLIP at 336 px with 14 px patches (24x24 = 576 visual tokens, layer -2, no CLS),
GELU projector, a LlamaForCausalLM, a text-prompted SAM and ``text_hidden_fcs``;
only the widths are small and SAM's input is 320 px (a 20x20 embedding, 80x80
low-res masks). The LLM has 8 layers: FastV prunes after layer K=2 as usual,
and PDrop's 32-layer stages [8, 16, 24] scale to [2, 4, 6] (engine's rule).

Weights (``assets/shapes/model.safetensors``) and the sizes they were trained
with (``assets/shapes/config.json``) come from ``scripts/train_shapes.py``; see
``assets/shapes/TRAINING.md`` for the command, seed, data version and log.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from altp.models.base import parse_dtype
from altp.models.glamm import GLaMM, GLaMMConfig
from altp.models.sam import GroundingEncoderConfig
from altp.models.tokenizer import load_glamm_tokenizer

__all__ = ["SHAPES_DIR", "MissingShapesWeightsError", "build_glamm_shapes", "config_from_dict", "config_to_dict",
           "shapes_config"]

SHAPES_DIR = Path(__file__).parent / "assets" / "shapes"


class MissingShapesWeightsError(FileNotFoundError):
    """The shipped shapes weights are absent (one-line message saying how to make them)."""


def shapes_config(
    *, vocab_size: int, hidden_size: int = 128, intermediate_size: int = 256, num_layers: int = 8,
    num_heads: int = 4, clip_hidden_size: int = 64, clip_layers: int = 4, sam_image_size: int = 320,
    sam_hidden_size: int = 64, sam_layers: int = 2, prompt_dim: int = 128,
) -> GLaMMConfig:
    """Sizes of the shapes model (defaults = the shipped model).

    ``clip_layers=4`` with GLaMM's ``select_layer=-2`` uses the first three CLIP layers
    (the last one only exists because the feature layer is the penultimate one).
    """
    return GLaMMConfig(
        clip=dict(hidden_size=clip_hidden_size, intermediate_size=4 * clip_hidden_size,
                  num_hidden_layers=clip_layers, num_attention_heads=2, image_size=336, patch_size=14,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5),
        llm=dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                 num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=1024,
                 rms_norm_eps=1e-6, tie_word_embeddings=False),
        # 320 px / 16 px patches = a 20x20 grid: two 10x10 windows per side, global last layer.
        sam=GroundingEncoderConfig(
            image_size=sam_image_size, patch_size=16, hidden_size=sam_hidden_size, num_layers=sam_layers,
            num_heads=2, global_attn_indexes=(sam_layers - 1,), window_size=10, prompt_dim=prompt_dim,
            decoder_mlp_dim=2 * prompt_dim, decoder_layers=2, decoder_heads=4, mask_in_chans=8),
        out_dim=prompt_dim,
    )


def config_to_dict(config: GLaMMConfig) -> dict[str, Any]:
    """JSON-ready sizes (written next to the weights)."""
    d = asdict(config)
    d["sam"]["global_attn_indexes"] = list(d["sam"]["global_attn_indexes"])
    return d


def config_from_dict(d: dict[str, Any]) -> GLaMMConfig:
    """Inverse of :func:`config_to_dict`."""
    sam = dict(d["sam"])
    sam["global_attn_indexes"] = tuple(sam["global_attn_indexes"])
    return GLaMMConfig(clip=dict(d["clip"]), llm=dict(d["llm"]), sam=GroundingEncoderConfig(**sam),
                       select_layer=int(d["select_layer"]), out_dim=int(d["out_dim"]))


def build_glamm_shapes(
    *,
    weights: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    max_new_tokens: int = 112,
) -> GLaMM:
    """The trained shapes GLaMM, ready for :meth:`GLaMM.predict`.

    Args:
        weights: folder with ``model.safetensors``, ``config.json`` and
            ``tokenizer/``; defaults to the shipped ``altp/models/assets/shapes``.
        dtype: ``float32`` (trained and evaluated in it) or ``bfloat16``.
        device: ``cpu`` or ``cuda[:i]``.
        max_new_tokens: generation cap; the longest shapes answer (6 objects) is
            about 100 tokens including EOS.

    Raises:
        MissingShapesWeightsError: no weights file (message says how to train one).
        ValueError: keys or shapes in the file differ from the model.

    Example:
        >>> m = build_glamm_shapes()  # doctest: +SKIP
        >>> m.num_visual, m.grid
        (576, (24, 24))
    """
    root = Path(weights) if weights is not None else SHAPES_DIR
    path = root / "model.safetensors"
    if not path.is_file():
        raise MissingShapesWeightsError(
            f"shapes weights not found at {path}; train them with `.venv/bin/python scripts/train_shapes.py "
            f"--out {root}` (see altp/models/assets/shapes/TRAINING.md)"
        )
    config = config_from_dict(json.loads((root / "config.json").read_text(encoding="utf-8")))
    tok, ids = load_glamm_tokenizer(root / "tokenizer")
    model = GLaMM(config=config, tokenizer=tok, token_ids=ids, name="glamm_shapes", max_new_tokens=max_new_tokens)
    state = load_file(str(path))
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or extra or bad:
        raise ValueError(f"{path} does not match the model in {root / 'config.json'}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, shape mismatches {bad[:5]}; retrain or fix config.json")
    model.load_state_dict(state, strict=True)
    return model.to(device=torch.device(device), dtype=parse_dtype(dtype, allowed=("float32", "bfloat16"))).eval()
