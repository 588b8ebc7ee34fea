"""Theoretical decoder FLOPs of pruned generation (the paper's eq. 5, multi-stage) in three conventions.

Per decoder layer with n tokens, hidden size d and MLP size m (eq. 5 of the
ALTP paper, the same count FastV uses)::

    f(n) = 4 n d^2 + 2 n^2 d + 2 n d m

With pruning stages that leave ``n_s`` tokens from layer ``l_s`` on, the FLOPs
ratio is ``sum_layers f(n_layer) / (T f(n))``; a single stage at layer K gives
the paper's ``(K f(n) + (T - K) f(n')) / (T f(n))``.

A run records three declared conventions (:data:`FLOPS_CONVENTIONS`; tables pick
one with ``scripts/make_tables.py --flops``):

* ``prompt`` (metrics.json ``flops_ratio``): eq. 5 over the prefill of the run's
  actual prompt (its real text length, e.g. about 70 tokens for GLaMM's GCG prompt).
* ``paper`` (``flops_ratio_paper``): eq. 5 over a prefill whose text part is fixed at
  :data:`PAPER_TEXT_TOKENS` = 32 tokens, whatever the prompt. The paper does not state
  its text length; on Vicuna-7B shapes with pruning at K = 2, every length from 32 to
  38 rounds to the printed 20 / 33 / 55 % at 57 / 144 / 288 of 576 tokens, no length
  outside that range does (31 gives 19.49 % at 57 tokens, 39 gives 20.50 %), and 32 is
  the shortest such length, so it is the convention used here.
* ``generation`` (``generation_flops_ratio`` and ``generation_tflops``): what a user
  pays for one image, prefill plus every KV-cached decoding step over the pruned cache
  (:func:`generation_flops`), as a ratio to the unpruned model generating the same
  number of tokens, and in absolute TFLOPs per image.

Decoding, in eq. 5's terms: one new token at a layer whose cache holds ``c`` entries
(itself included) costs ``4 d^2`` (q, k, v, o projections of one token), ``2 c d``
(its scores against c keys plus the weighted sum of c values; eq. 5's ``2 n^2 d`` is
this summed over n tokens that each see n) and ``2 d m`` (the MLP), i.e.
``f_step(c) = 4 d^2 + 2 c d + 2 d m``. Generating ``G`` tokens takes the prefill
(which yields token 1) and ``G - 1`` decoding steps; step ``j`` feeds generated token
``j``, so at layer l the cache holds the ``n_l`` prefill tokens kept at that layer
plus ``j`` generated ones: ``decode = sum_{j=1}^{G-1} sum_l f_step(n_l + j)``.
Only decoder layers count (no LM head, vision tower or mask decoder), as in eq. 5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "FLOPS_CONVENTIONS",
    "FlopsConvention",
    "LLMShape",
    "MODEL_SHAPES",
    "PAPER_TEXT_TOKENS",
    "decode_flops",
    "flops_ratio",
    "generation_flops",
    "layer_flops",
    "paper_flops_ratio",
    "prefill_flops",
    "summarise_flops",
    "uncached_generation_flops",
]

# Text tokens of the paper's FLOPs convention (see the module docstring for why 32).
PAPER_TEXT_TOKENS = 32


@dataclass(frozen=True)
class LLMShape:
    """Decoder shape for the FLOPs model.

    Attributes:
        hidden_size: d.
        intermediate_size: m, the MLP width.
        num_layers: T.
    """

    hidden_size: int
    intermediate_size: int
    num_layers: int


MODEL_SHAPES: dict[str, LLMShape] = {
    # GLaMM's LLM is Vicuna-7B (LLaMA-7B shapes).
    "glamm": LLMShape(hidden_size=4096, intermediate_size=11008, num_layers=32),
    # OMG-LLaVA's LLM is InternLM2-chat-7B.
    "omg_llava": LLMShape(hidden_size=4096, intermediate_size=14336, num_layers=32),
}


def layer_flops(n: float, d: int, m: int) -> float:
    """FLOPs of one decoder layer on n tokens: 4nd^2 + 2n^2 d + 2ndm (eq. 5)."""
    return 4.0 * n * d * d + 2.0 * n * n * d + 2.0 * n * d * m


_Count = TypeVar("_Count", int, float)


def _tokens_per_layer(n: _Count, stages: Sequence[tuple[int, _Count]], num_layers: int) -> list[_Count]:
    """Tokens each layer sees; ``stages`` is [(layer, tokens from that layer on)], layers ascending.

    Counts are ints, or real-valued for PyramidDrop's continuous lambda solve.
    """
    counts = [n] * num_layers
    last = -1
    for layer, n_after in stages:
        if not (0 <= layer < num_layers) or layer <= last:
            raise ValueError(
                f"stage layers must be ascending in [0, {num_layers}), got {list(stages)}"
            )
        last = layer
        for i in range(layer, num_layers):
            counts[i] = n_after
    return counts


def prefill_flops(n: float, stages: Sequence[tuple[int, float]], shape: LLMShape) -> float:
    """Decoder FLOPs for a prefill of n tokens under pruning ``stages``.

    Args:
        n: total tokens entering layer 0 (text + visual).
        stages: [(layer, total tokens from that layer on)], ascending layers;
            empty for no pruning. Token counts may be real-valued (a continuous solve).
        shape: the decoder shape.
    """
    d, m = shape.hidden_size, shape.intermediate_size
    return sum(layer_flops(c, d, m) for c in _tokens_per_layer(n, stages, shape.num_layers))


def flops_ratio(
    *,
    num_text: int,
    num_visual: int,
    visual_kept: Sequence[tuple[int, int]],
    shape: LLMShape,
    added: float = 0.0,
) -> float:
    """Remaining-FLOPs fraction of pruned prefill (1.0 = unpruned).

    Args:
        num_text: non-visual tokens in the prompt (they are never pruned).
        num_visual: V, visual tokens before pruning.
        visual_kept: [(layer, visual tokens kept from that layer on)]; layer 0 prunes
            at the LLM input (eq. 5 with K = 0: every layer sees the kept tokens).
        shape: the decoder shape.
        added: FLOPs the method adds beyond the decoder (its selection work), counted
            on the pruned side.

    Example:
        >>> round(flops_ratio(num_text=32, num_visual=576, visual_kept=[(2, 57)],
        ...                   shape=MODEL_SHAPES["glamm"]), 2)
        0.2
    """
    n = num_text + num_visual
    stages = [(layer, num_text + v) for layer, v in visual_kept]
    return (prefill_flops(n, stages, shape) + added) / prefill_flops(n, [], shape)


def paper_flops_ratio(
    *, num_visual: int, visual_kept: Sequence[tuple[int, int]], shape: LLMShape, added: float = 0.0
) -> float:
    """:func:`flops_ratio` with the paper's fixed text length, :data:`PAPER_TEXT_TOKENS`.

    Example:
        >>> [round(100 * paper_flops_ratio(num_visual=576, visual_kept=[(2, k)],
        ...                                shape=MODEL_SHAPES["glamm"])) for k in (57, 144, 288)]
        [20, 33, 55]
    """
    return flops_ratio(
        num_text=PAPER_TEXT_TOKENS, num_visual=num_visual, visual_kept=visual_kept, shape=shape, added=added
    )


def decode_flops(*, cache_per_layer: Sequence[int], new_tokens: int, shape: LLMShape) -> float:
    """FLOPs of the ``new_tokens - 1`` KV-cached decoding steps after a prefill.

    Step j (1 <= j < new_tokens) feeds generated token j; at layer l it attends to
    ``cache_per_layer[l] + j`` entries and costs ``4 d^2 + 2 (cache_per_layer[l] + j) d + 2 d m``
    (see the module docstring). The prefill yields the first token, so one generated
    token costs no decoding step.

    Args:
        cache_per_layer: prefill tokens each layer keeps in its cache, length T.
        new_tokens: G, generated tokens (EOS included when produced), >= 0.
        shape: the decoder shape.
    """
    if len(cache_per_layer) != shape.num_layers:
        raise ValueError(
            f"cache_per_layer needs {shape.num_layers} entries, got {len(cache_per_layer)}"
        )
    if new_tokens < 0:
        raise ValueError(f"new_tokens must be >= 0, got {new_tokens}")
    d, m, steps = shape.hidden_size, shape.intermediate_size, max(new_tokens - 1, 0)
    # sum_j sum_l [4d^2 + 2dm + 2d c_l + 2d j] in closed form: the j-sum of j is steps(steps+1)/2.
    per_token = 4.0 * d * d + 2.0 * d * m
    return steps * shape.num_layers * per_token + 2.0 * d * (
        steps * sum(cache_per_layer) + shape.num_layers * steps * (steps + 1) / 2
    )


def generation_flops(
    *,
    num_text: int,
    num_visual: int,
    visual_kept: Sequence[tuple[int, int]],
    new_tokens: int,
    shape: LLMShape,
) -> float:
    """Decoder FLOPs of one KV-cached generation: pruned prefill plus every decoding step.

    Args:
        num_text: non-visual prompt tokens (never pruned).
        num_visual: V, visual tokens before pruning.
        visual_kept: [(layer, visual tokens kept from that layer on)], ascending; the
            cache of a layer holds what its prefill kept. Empty = unpruned.
        new_tokens: G, generated tokens.
        shape: the decoder shape.
    """
    n = num_text + num_visual
    counts = _tokens_per_layer(
        n, [(layer, num_text + v) for layer, v in visual_kept], shape.num_layers
    )
    d, m = shape.hidden_size, shape.intermediate_size
    prefill = sum(layer_flops(c, d, m) for c in counts)
    return prefill + decode_flops(cache_per_layer=counts, new_tokens=new_tokens, shape=shape)


def uncached_generation_flops(
    *,
    num_text: int,
    num_visual: int,
    visual_kept_per_step: Sequence[Sequence[tuple[int, int]]],
    shape: LLMShape,
) -> float:
    """Decoder FLOPs of a generation without KV cache that re-selects tokens at every step.

    Forward pass j (j = 0 for the prompt, then one per decoding step) recomputes the
    whole sequence of ``num_text + num_visual + j`` tokens under its own pruning
    ``visual_kept_per_step[j]`` (FastV's upstream ``use_cache=False`` generate). The
    records of a run in that mode hold one selection's counts, which every step repeats
    (only which tokens are kept changes), and the number of selections
    (``extras.reselect_steps``); :func:`summarise_flops` passes those here.

    Args:
        num_text: non-visual prompt tokens; generated tokens are added per step.
        num_visual: V.
        visual_kept_per_step: per forward pass, [(layer, visual tokens kept from there)];
            its length is the number of generated tokens G.
        shape: the decoder shape.
    """
    n = num_text + num_visual
    return sum(
        prefill_flops(n + j, [(layer, num_text + j + v) for layer, v in kept], shape)
        for j, kept in enumerate(visual_kept_per_step)
    )


@dataclass(frozen=True)
class FlopsConvention:
    """One declared way of counting FLOPs, as recorded in metrics.json.

    Attributes:
        name: the ``--flops`` choice of scripts/make_tables.py.
        key: the metrics.json key holding the remaining fraction (1.0 = unpruned).
        description: what the number is, for table footnotes.
    """

    name: str
    key: str
    description: str


FLOPS_CONVENTIONS: dict[str, FlopsConvention] = {
    c.name: c
    for c in (
        FlopsConvention(
            name="prompt",
            key="flops_ratio",
            description="remaining prefill FLOPs, eq. 5 on each run's own prompt length",
        ),
        FlopsConvention(
            name="paper",
            key="flops_ratio_paper",
            description=f"remaining prefill FLOPs, eq. 5 with the paper's fixed {PAPER_TEXT_TOKENS} "
            "text tokens (reproduces its 20 / 33 / 55 %)",
        ),
        FlopsConvention(
            name="generation",
            key="generation_flops_ratio",
            description="remaining FLOPs of the whole generation (prefill + every KV-cached "
            "decoding step over the pruned cache) vs the unpruned model generating as many tokens",
        ),
    )
}


def summarise_flops(records: Sequence[dict], *, shape: LLMShape) -> dict[str, float]:
    """The FLOPs keys of metrics.json from successful per-image records.

    Each record needs ``num_text_tokens``, ``num_visual``, ``stage_layers``,
    ``kept_per_stage`` (visual tokens kept from each stage layer on) and ``new_tokens``.
    A record whose ``extras`` has ``reselect_steps`` comes from a generation that
    re-selected at every step without a KV cache (``pruner=fastv pruner.reselect=per_step``):
    its generation FLOPs are :func:`uncached_generation_flops` over that many forward
    passes, still compared with the unpruned model's cached generation (the user's
    alternative), so that ratio can exceed 1.

    A record whose ``extras`` has ``added_flops`` (work a method adds beyond the decoder:
    DivPrune's distance matrix, VisionZip's merge, DART's similarities) counts it on the
    pruned side of every convention: added to the pruned prefill of ``prompt`` and
    ``paper`` and to the pruned generation.

    Returns:
        ``flops_ratio`` and ``flops_ratio_paper`` (means over images of the per-image
        remaining fraction), ``generation_flops_ratio`` (total over the images of the
        pruned generations / total of unpruned generations of the same lengths: the
        share of the split's compute a user still pays) and ``generation_tflops`` (mean
        TFLOPs per image of the pruned generation). Empty when ``records`` is.
    """
    if not records:
        return {}
    prompt, paper, pruned, full = [], [], 0.0, 0.0
    for r in records:
        v = int(r["num_visual"])
        stages = list(zip(r["stage_layers"], r["kept_per_stage"], strict=True))
        added = float((r.get("extras") or {}).get("added_flops", 0.0))
        prompt.append(
            flops_ratio(
                num_text=r["num_text_tokens"], num_visual=v, visual_kept=stages, shape=shape, added=added
            )
        )
        paper.append(paper_flops_ratio(num_visual=v, visual_kept=stages, shape=shape, added=added))
        common = {
            "num_text": r["num_text_tokens"],
            "num_visual": v,
            "new_tokens": r["new_tokens"],
            "shape": shape,
        }
        steps = (r.get("extras") or {}).get("reselect_steps")
        pruned += added
        if steps is None:
            pruned += generation_flops(visual_kept=stages, **common)
        else:
            pruned += uncached_generation_flops(
                num_text=r["num_text_tokens"],
                num_visual=v,
                visual_kept_per_step=[stages] * steps,
                shape=shape,
            )
        full += generation_flops(visual_kept=[], **common)
    return {
        "flops_ratio": sum(prompt) / len(prompt),
        "flops_ratio_paper": sum(paper) / len(paper),
        "generation_flops_ratio": pruned / full,
        "generation_tflops": pruned / len(records) / 1e12,
    }
