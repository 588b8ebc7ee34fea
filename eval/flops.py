"""Theoretical decoder FLOPs of pruned prefill (the paper's eq. 5, multi-stage).

Per decoder layer with n tokens, hidden size d and MLP size m (eq. 5 of the
ALTP paper, the same count FastV uses)::

    f(n) = 4 n d^2 + 2 n^2 d + 2 n d m

With pruning stages that leave ``n_s`` tokens from layer ``l_s`` on, the FLOPs
ratio is ``sum_layers f(n_layer) / (T f(n))``; a single stage at layer K gives
the paper's ``(K f(n) + (T - K) f(n')) / (T f(n))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LLMShape", "MODEL_SHAPES", "layer_flops", "prefill_flops", "flops_ratio"]


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


def _tokens_per_layer(n: int, stages: Sequence[tuple[int, int]], num_layers: int) -> list[int]:
    """Tokens each layer sees; ``stages`` is [(layer, tokens from that layer on)], layers ascending."""
    counts = [n] * num_layers
    last = -1
    for layer, n_after in stages:
        if not (0 <= layer < num_layers) or layer <= last:
            raise ValueError(f"stage layers must be ascending in [0, {num_layers}), got {list(stages)}")
        last = layer
        for i in range(layer, num_layers):
            counts[i] = n_after
    return counts


def prefill_flops(n: int, stages: Sequence[tuple[int, int]], shape: LLMShape) -> float:
    """Decoder FLOPs for a prefill of n tokens under pruning ``stages``.

    Args:
        n: total tokens entering layer 0 (text + visual).
        stages: [(layer, total tokens from that layer on)], ascending layers;
            empty for no pruning.
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
) -> float:
    """Remaining-FLOPs fraction of pruned prefill (1.0 = unpruned).

    Args:
        num_text: non-visual tokens in the prompt (they are never pruned).
        num_visual: V, visual tokens before pruning.
        visual_kept: [(layer, visual tokens kept from that layer on)].
        shape: the decoder shape.

    Example:
        >>> round(flops_ratio(num_text=32, num_visual=576, visual_kept=[(2, 57)],
        ...                   shape=MODEL_SHAPES["glamm"]), 2)
        0.2
    """
    n = num_text + num_visual
    stages = [(layer, num_text + v) for layer, v in visual_kept]
    return prefill_flops(n, stages, shape) / prefill_flops(n, [], shape)
