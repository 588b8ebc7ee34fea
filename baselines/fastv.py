"""FastV (Chen et al., 2024): drop the visual tokens the last token attends to least.

Mirrors upstream ``pkunlp-icler/FastV`` (``src/transformers/.../llama/modeling_llama.py``,
its ``fast_v_inplace`` branch): at layer K the visual tokens are ranked by the
attention weights of layer K-1 (softmax per head over the whole row, mean over
heads, the row of the LAST token of the sequence, image columns), the top
``n_keep`` survive, re-sorted into their original order, and keep their
original position ids (gaps). The engine computes that one attention row from
layer K-1's own input norm, q/k projections and RoPE instead of running it in
eager mode.

When the kept set is chosen (``reselect``):

* ``prefill`` (default): once, from the last prompt token; decoding reuses the
  set through the KV cache, as lmms-eval's ``fastv_kvcache`` does.
* ``per_step``: upstream's own evaluation path (``generate(use_cache=False,
  output_attentions=True)``; its in-place branch says "KV-Cache not supported").
  Every decoding step recomputes prompt + generated tokens through all layers
  without a cache and re-ranks the visual tokens by the NEWEST token's attention
  at layer K-1; generated tokens are always kept, at positions ``N + j``.
  The first step is the prefill mode's. SLOW: O(T) full-sequence
  recomputations for T generated tokens; the model adapters switch to the
  uncached path by themselves.

Where this follows upstream and where it deviates:

* Follows: layer K-1's post-softmax weights (upstream reads ``layer_outputs[1]``
  of the layer before K), mean over heads, last row, top-k, kept indices sorted,
  original positions, generated tokens kept, re-ranking per step when uncached.
* Image span: upstream hard-codes it (``fast_v_sys_length``, e.g. 35, and
  ``fast_v_image_token_length`` 576); here it is the span the model adapter
  reports (GLaMM's real ``<im_start>`` offset, OMG-LLaVA's pixel tokens).
* Count: upstream passes the rank directly (``fast_v_attention_rank``); here
  ``floor(keep * V)``.
* K=0: upstream's in-place branch asserts K > 0 and its mask branch keeps a
  random set at K=0; here K >= 1 is required (``pruner=random`` is the random
  baseline).
* Batch: upstream ranks with batch element 0 only (``mean(...)[0]``) and so
  runs batch 1; here each batch element is ranked by its own row.
* Precision: upstream's weights are fp16 (softmax in fp32, cast back) and the
  head mean is fp16; here the row is fp32, which can break near-ties
  differently in half precision.
* Upstream's mask branch masks the unselected image keys from layer K on
  instead of dropping them; for every kept token that is the same computation.
"""

from __future__ import annotations

from typing import Any

from altp.pruning.base import PruneContext, Pruner, Selection, register_pruner

__all__ = ["RESELECT_MODES", "FastVPruner"]

#: when the kept set is chosen: once at prefill, or again at every decoding step
RESELECT_MODES = ("prefill", "per_step")


@register_pruner("fastv")
class FastVPruner(Pruner):
    """Keep the ``floor(keep * V)`` visual tokens with the highest last-token attention at layer K-1.

    Args:
        keep: fraction of visual tokens kept, in (0, 1].
        layer: K (upstream default 2): the input of layer K is pruned.
        reselect: ``prefill`` (select once, decode with the KV cache) or
            ``per_step`` (upstream's uncached generate: re-rank with the newest
            token at every step; slow, see the module docstring).
    """

    def __init__(self, *, keep: float, layer: int = 2, reselect: str = "prefill") -> None:
        super().__init__(keep=keep, layer=layer)
        if reselect not in RESELECT_MODES:
            raise ValueError(
                f"fastv reselect must be one of {', '.join(RESELECT_MODES)}, got {reselect!r}"
            )
        self.reselect = reselect

    @property
    def reselects_per_step(self) -> bool:
        return self.reselect == "per_step"

    def select(self, ctx: PruneContext) -> Selection:
        if ctx.scores is None:
            raise ValueError(
                "FastV needs ctx.scores (the engine provides them when score_layer is set)"
            )
        # topk's order among ties is unspecified; sorting the chosen indices restores the original order.
        top = ctx.scores.topk(ctx.n_keep, dim=1).indices  # (B, n_keep)
        return Selection(indices=top.sort(dim=1).values)

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "reselect": self.reselect}
