"""Every GLaMM there is, by name: the builders ``conf/model/glamm*.yaml`` instantiate.

==================  ===========================================================  ==================
name                what                                                         weights
==================  ===========================================================  ==================
glamm               GLaMM-GCG as released (Vicuna-7B, CLIP ViT-L/14-336, SAM     the official files
                    ViT-H), sizes from the checkpoint's config files
glamm_shapes        the embedded default: small, trained here on the synthetic   ``assets/shapes/``
                    shapes benchmark (8 layers, SAM at 320 px)
glamm_tiny          toy width, 32 decoder layers, SAM at 256 px; CPU, tests      seeded random
glamm_full_random   the released sizes with random weights; GPU timing without   seeded random
                    the checkpoint
==================  ===========================================================  ==================

All of them are the same class and code path (:class:`altp.models.glamm.GLaMM`):
CLIP at 336 px with 14 px patches (24x24 = 576 visual tokens), GLaMM's prompt and
added tokens, SAM's text-prompted mask path. Each named builder only picks sizes
and a weights source; :func:`_build_glamm` puts the model together. The small
sizes are one function (:func:`small_config`) that the presets call with their
numbers. Look a builder up by name in :data:`GLAMM_BUILDERS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers.initialization import no_init_weights

from altp.models.base import parse_dtype
from altp.models.glamm import GLaMM, GLaMMConfig, config_from_dict
from altp.models.glamm_convert import load_official_weights, official_config
from altp.models.random_weights import randomize_, wire_bigram_chain_
from altp.models.sam import GroundingEncoderConfig
from altp.models.tokenizer import TINY_TOKENIZER_DIR, load_glamm_tokenizer
from altp.pruning.base import VISION_SIGNALS as _ALL_SIGNALS

__all__ = [
    "VISION_SIGNALS",
    "GLAMM_BUILDERS", "SHAPES_DIR", "WEIGHT_PATHS", "MissingShapesWeightsError", "build_glamm", "build_glamm_full_random",
    "build_glamm_shapes", "build_glamm_tiny", "script_", "shapes_config", "small_config",
]

# What every builder's model offers the LLM-input pruners (altp.pruning.base.VisionSignals), read by the
# runner before any weight loads: CLIP ViT-L/14 has a CLS token and attention.
VISION_SIGNALS: frozenset[str] = frozenset(_ALL_SIGNALS)

SHAPES_DIR = Path(__file__).parent / "assets" / "shapes"


class MissingShapesWeightsError(FileNotFoundError):
    """The shipped shapes weights are absent (one-line message saying how to make them)."""


# -- the named builders ------------------------------------------------------------------------
def build_glamm(
    *,
    checkpoint_dir: str,
    clip_dir: str,
    tokenizer_dir: str | None = None,
    dtype: str = "bfloat16",
    device: str = "cuda",
    max_new_tokens: int = 512,
    sam: GroundingEncoderConfig | dict[str, Any] | None = None,
) -> GLaMM:
    """GLaMM-GCG with the official weights (:mod:`altp.models.glamm_convert`).

    Args:
        checkpoint_dir: a download of ``MBZUAI/GLaMM-GCG`` (config.json + shards).
        clip_dir: a download of ``openai/clip-vit-large-patch14-336``.
        tokenizer_dir: defaults to ``checkpoint_dir``.
        dtype: ``bfloat16`` (upstream), ``float16`` or ``float32``.
        device: ``cuda``, ``cuda:i`` or ``cpu``.
        max_new_tokens: generation length (upstream: 512).
        sam: SAM sizes; default ViT-H as upstream hard-codes (the checkpoint
            stores no SAM config). Tests pass a tiny one.

    Raises:
        MissingCheckpointError: a file is absent (one-line message with the
            download command).
        CheckpointMismatchError: keys or shapes do not match.
    """
    torch_dtype = parse_dtype(dtype)  # a bad name fails before any file is read
    sam_cfg = sam if isinstance(sam, GroundingEncoderConfig) else GroundingEncoderConfig(**(sam or {}))
    config = official_config(checkpoint_dir, clip_dir, sam=sam_cfg)
    return _build_glamm(
        config=config, tokenizer_dir=tokenizer_dir or checkpoint_dir, name="glamm", dtype=torch_dtype,
        device=device, max_new_tokens=max_new_tokens, on_device=True,
        weights=lambda model: load_official_weights(model, checkpoint_dir, clip_dir),
    )  # fmt: skip


def build_glamm_shapes(
    *, weights: str | None = None, dtype: str = "float32", device: str = "cpu", max_new_tokens: int = 112
) -> GLaMM:
    """The trained shapes GLaMM (sizes and weights from ``weights``), ready for :meth:`GLaMM.predict`.

    Args:
        weights: folder with ``model.safetensors``, ``config.json`` and
            ``tokenizer/`` (written by ``scripts/train_shapes.py``); defaults to
            the shipped ``altp/models/assets/shapes`` (see ``TRAINING.md`` there).
        dtype: ``float32`` (trained and evaluated in it) or ``bfloat16``.
        device: ``cpu`` or ``cuda[:i]``.
        max_new_tokens: generation cap; the longest shapes answer (6 objects) is
            about 100 tokens including EOS.

    Raises:
        MissingShapesWeightsError: no weights file (message says how to train one).
        ValueError: keys or shapes in the file differ from the model.
    """
    root = Path(weights) if weights is not None else SHAPES_DIR
    path = root / "model.safetensors"
    if not path.is_file():
        raise MissingShapesWeightsError(
            f"shapes weights not found at {path}; train them with `.venv/bin/python scripts/train_shapes.py "
            f"--out {root}` (see altp/models/assets/shapes/TRAINING.md)"
        )
    config = config_from_dict(json.loads((root / "config.json").read_text(encoding="utf-8")))
    return _build_glamm(
        config=config, tokenizer_dir=root / "tokenizer", name="glamm_shapes",
        dtype=parse_dtype(dtype, allowed=("float32", "bfloat16")), device=device, max_new_tokens=max_new_tokens,
        weights=lambda model: _load_trained(model, path, root / "config.json"),
    )  # fmt: skip


def build_glamm_tiny(
    *,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    max_new_tokens: int = 32,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 32,
    num_heads: int = 4,
    clip_hidden_size: int = 32,
    clip_layers: int = 2,
    sam_image_size: int = 256,
    sam_hidden_size: int = 32,
    sam_layers: int = 2,
    prompt_dim: int = 32,
    script: str | None = None,
) -> GLaMM:
    """A random GLaMM at toy width, deterministic by ``seed`` (CPU tests and CI).

    32 decoder layers, so FastV's K=2 and PDrop's [8, 16, 24] schedules apply unchanged.

    Args:
        seed: weight seed (:func:`altp.models.random_weights.randomize_`).
        dtype: ``float32`` or ``bfloat16``.
        device: ``cpu`` or ``cuda[:i]``.
        max_new_tokens: default generation length.
        hidden_size, intermediate_size, num_layers, num_heads: the LLM.
        clip_hidden_size, clip_layers: the CLIP tower (336 px, 14 px patches kept).
        sam_image_size, sam_hidden_size, sam_layers: SAM's encoder (16 px patches).
        prompt_dim: SAM prompt width = text_hidden_fcs output (256 in GLaMM).
        script: if given, greedy decoding after the prompt follows this answer
            (e.g. ``"<p>A red circle</p>[SEG] on the left."``) and then EOS, so
            runs exercise phrases, [SEG] states and masks; see :func:`script_`.

    Example:
        >>> m = build_glamm_tiny(seed=0)
        >>> m.num_visual, m.grid
        (576, (24, 24))
    """
    config = small_config(
        hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers, num_heads=num_heads,
        max_positions=2048, clip_hidden_size=clip_hidden_size, clip_mlp_ratio=2, clip_layers=clip_layers,
        sam_image_size=sam_image_size, sam_hidden_size=sam_hidden_size, sam_layers=sam_layers, sam_window=4,
        prompt_dim=prompt_dim, sam_decoder_heads=2,
    )  # fmt: skip
    return _build_glamm(
        config=config, tokenizer_dir=TINY_TOKENIZER_DIR, name="glamm_tiny", dtype=parse_dtype(dtype),
        device=device, max_new_tokens=max_new_tokens, weights=lambda model: randomize_(model, seed=seed),
        script=script,
    )  # fmt: skip


def build_glamm_full_random(
    *, seed: int = 0, dtype: str = "bfloat16", device: str = "cuda", max_new_tokens: int = 512,
    script: str | None = None,
) -> GLaMM:
    """GLaMM at full size (Vicuna-7B, CLIP ViT-L/14-336, SAM ViT-H) with random weights.

    For GPU timing and smoke runs without the checkpoint; the tiny tokenizer stands in
    for LLaMA's (its ids all fit the 32007-row embedding). transformers' own init
    (seeded) runs directly on ``device``: seconds on a GPU, minutes on a CPU. Same
    arguments as :func:`build_glamm_tiny` for the common ones, so
    ``model=glamm_tiny model._target_=altp.models.glamm_build.build_glamm_full_random
    model.device=cuda model.dtype=bfloat16`` works from the command line.
    """
    torch.manual_seed(int(seed))
    return _build_glamm(
        config=GLaMMConfig(), tokenizer_dir=TINY_TOKENIZER_DIR, name="glamm_full_random", dtype=parse_dtype(dtype),
        device=device, max_new_tokens=max_new_tokens, on_device=True, script=script,
    )  # fmt: skip


#: Every GLaMM builder by registry name (= its ``conf/model/`` file name where it has one).
GLAMM_BUILDERS: dict[str, Callable[..., GLaMM]] = {
    "glamm": build_glamm,
    "glamm_shapes": build_glamm_shapes,
    "glamm_tiny": build_glamm_tiny,
    "glamm_full_random": build_glamm_full_random,
}


def _shapes_weight_paths(model_cfg: dict[str, Any]) -> dict[str, Path]:
    weights = model_cfg.get("weights")
    return {"weights": Path(weights) if weights is not None else SHAPES_DIR}


#: Files a builder loads without its config naming them, by builder function name:
#: ``fn(model_cfg) -> {config key: path}``. :mod:`altp.run.fingerprint` hashes them, so a
#: run resumed after retraining the shipped shapes weights (``weights: null``) is refused.
WEIGHT_PATHS: dict[str, Callable[[dict[str, Any]], dict[str, Path]]] = {
    "build_glamm_shapes": _shapes_weight_paths,
}


# -- sizes ---------------------------------------------------------------------------------------
def small_config(
    *, vocab_size: int | None = None, hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int,
    max_positions: int, clip_hidden_size: int, clip_mlp_ratio: int, clip_layers: int, sam_image_size: int,
    sam_hidden_size: int, sam_layers: int, sam_window: int, prompt_dim: int, sam_decoder_heads: int,
) -> GLaMMConfig:
    """GLaMM's architecture at small width: what the tiny and shapes presets share.

    Kept from the released model: CLIP at 336 px with 14 px patches (the 24x24 grid),
    GLaMM's feature layer -2, a Llama LLM, SAM with 16 px patches whose last encoder
    layer attends globally and ``text_hidden_fcs`` writing SAM's prompt width.

    Args:
        vocab_size: embedding rows; None = one per token of the tokenizer the
            builder loads.
        max_positions: the LLM's ``max_position_embeddings``.
        clip_mlp_ratio: CLIP's intermediate size / hidden size.
        sam_window: SAM's window size, in 16 px patches.
        prompt_dim: SAM's prompt width = ``text_hidden_fcs`` output.
        the rest: the parts' widths, depths and heads.
    """
    return GLaMMConfig(
        clip=dict(hidden_size=clip_hidden_size, intermediate_size=clip_mlp_ratio * clip_hidden_size,
                  num_hidden_layers=clip_layers, num_attention_heads=2, image_size=336, patch_size=14,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5),
        llm=dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                 num_hidden_layers=num_layers, num_attention_heads=num_heads, max_position_embeddings=max_positions,
                 rms_norm_eps=1e-6, tie_word_embeddings=False),
        sam=GroundingEncoderConfig(
            image_size=sam_image_size, patch_size=16, hidden_size=sam_hidden_size, num_layers=sam_layers,
            num_heads=2, global_attn_indexes=(sam_layers - 1,), window_size=sam_window, prompt_dim=prompt_dim,
            decoder_mlp_dim=2 * prompt_dim, decoder_layers=2, decoder_heads=sam_decoder_heads, mask_in_chans=8),
        out_dim=prompt_dim,
    )  # fmt: skip


def shapes_config(
    *, vocab_size: int, hidden_size: int = 128, intermediate_size: int = 256, num_layers: int = 8,
    num_heads: int = 4, clip_hidden_size: int = 64, clip_layers: int = 4, sam_image_size: int = 320,
    sam_hidden_size: int = 64, sam_layers: int = 2, prompt_dim: int = 128,
) -> GLaMMConfig:
    """Sizes of the shapes model (defaults = the shipped model; ``scripts/train_shapes.py`` trains them).

    8 LLM layers: FastV prunes after layer K=2 as usual, and PDrop's 32-layer stages
    [8, 16, 24] scale to [2, 4, 6] (the engine's rule). ``clip_layers=4`` with GLaMM's
    ``select_layer=-2`` uses the first three CLIP layers (the last one only exists
    because the feature layer is the penultimate one). SAM at 320 px / 16 px patches
    is a 20x20 grid: two 10x10 windows per side (80x80 low-res masks).
    """
    return small_config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
        num_heads=num_heads, max_positions=1024, clip_hidden_size=clip_hidden_size, clip_mlp_ratio=4,
        clip_layers=clip_layers, sam_image_size=sam_image_size, sam_hidden_size=sam_hidden_size,
        sam_layers=sam_layers, sam_window=10, prompt_dim=prompt_dim, sam_decoder_heads=4,
    )  # fmt: skip


# -- assembly ------------------------------------------------------------------------------------
def _build_glamm(
    *,
    config: GLaMMConfig,
    tokenizer_dir: str | Path,
    name: str,
    dtype: torch.dtype,
    device: str,
    max_new_tokens: int,
    weights: Callable[[GLaMM], None] | None = None,
    on_device: bool = False,
    script: str | None = None,
) -> GLaMM:
    """The one place a GLaMM is put together: tokenizer, construction, weights, script, cast.

    Args:
        config: part sizes; ``llm['vocab_size'] = None`` means one row per token.
        tokenizer_dir: a folder :func:`load_glamm_tokenizer` reads.
        name: registry name, recorded in run files.
        weights: fills the parameters (a checkpoint, a seeded draw); None keeps
            transformers' init.
        on_device: construct directly on ``device`` in ``dtype`` (full size: 7B in fp32
            on the CPU would double peak memory), skipping the random init when
            ``weights`` overwrites every parameter anyway. Otherwise the model is
            built, filled and scripted in fp32 on the CPU and cast last, so a small
            model has the same values whatever its device and dtype.
        script: an answer to wire into the weights (:func:`script_`).
    """
    tok, ids = load_glamm_tokenizer(tokenizer_dir)
    if "vocab_size" in config.llm and config.llm["vocab_size"] is None:
        config = replace(config, llm={**config.llm, "vocab_size": len(tok)})
    build = partial(GLaMM, config=config, tokenizer=tok, token_ids=ids, name=name, max_new_tokens=max_new_tokens)
    if on_device:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device), (no_init_weights() if weights is not None else nullcontext()):
                model = build()
        finally:
            torch.set_default_dtype(previous)
    else:
        model = build()
    if weights is not None:
        weights(model)
    if script is not None:
        script_(model, script)
    return model.to(device=torch.device(device), dtype=dtype).eval()


def _load_trained(model: GLaMM, path: Path, config_json: Path) -> None:
    """Load a trained ``model.safetensors`` after checking its keys and shapes against ``model``."""
    state = load_file(str(path))
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or extra or bad:
        raise ValueError(f"{path} does not match the model in {config_json}: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, shape mismatches {bad[:5]}; retrain or fix config.json")
    model.load_state_dict(state, strict=True)


def script_(model: GLaMM, script: str, *, embed_scale: float = 3.0, logit_scale: float = 8.0) -> None:
    """Wire a bigram chain into a random model so greedy decoding emits ``script`` then EOS.

    The chain is ``[last prompt token, *tokens(script), EOS]``
    (:func:`altp.models.random_weights.wire_bigram_chain_`). Every token may appear
    once as a predecessor and once as a successor.

    Raises:
        ValueError: the script repeats a token or has words the tokenizer does not know.
    """
    tok, ids = model.tokenizer, model.token_ids
    chain = [model.suffix_ids[-1], *tok(script, add_special_tokens=False)["input_ids"], ids.eos]
    pred, succ = chain[:-1], chain[1:]
    if len(set(pred)) != len(pred) or len(set(succ)) != len(succ) or tok.unk_token_id in chain:
        raise ValueError(f"script {script!r} repeats a token or has unknown words; every token must be unique")
    wire_bigram_chain_(model.llm, chain, embed_scale=embed_scale, logit_scale=logit_scale)
