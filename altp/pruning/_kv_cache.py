"""A KV cache that appends a decoding step in place instead of copying the whole cache.

A stock :class:`transformers.DynamicLayer` appends with ``torch.cat``, which
copies every cached key and value of every sample at every step: for a batch of
B samples with a few hundred unpruned tokens in the layers before a pruning
stage that copy grows with B and was the largest per-sample cost of a batched
decoding step on the CPU. :class:`GrowingLayer` keeps the keys and values in a
buffer with spare room along the sequence and exposes ``keys`` / ``values`` as
views of its filled prefix, so a step writes only its new token.

The attention reads the same numbers in the same order (only the stride of the
head dim differs), so the results are bit-identical to the stock cache; the
batched-equals-batch-of-one and committed-study tests check it through the models.
Everything else (``batch_select_indices``, ``crop``, reading ``keys``) is the
stock layer's: an operation that replaces ``keys`` with a compact tensor just
makes the next append move it into a fresh buffer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache, DynamicLayer, PretrainedConfig

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers.cache_utils import CacheLayerMixin

__all__ = ["GrowingLayer", "growing_cache"]


class GrowingLayer(DynamicLayer):
    """A :class:`transformers.DynamicLayer` whose appends write into spare capacity."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def _holds_prefix(self, need: int, like: torch.Tensor) -> bool:
        """Whether ``keys``/``values`` are views of the buffers, which have room for ``need`` tokens."""
        kb, vb, k, v = self._kbuf, self._vbuf, self.keys, self.values
        if kb is None or vb is None or k is None or v is None or k.numel() == 0:
            return False
        return (kb.shape[-2] >= need and kb.shape[:2] == like.shape[:2] and kb.shape[-1] == like.shape[-1]
                and k.data_ptr() == kb.data_ptr() and v.data_ptr() == vb.data_ptr()
                and k.stride() == kb.stride() and v.stride() == vb.stride())  # fmt: skip

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, H, n, D) keys and values; returns the cached (B, H, L, D) views."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self.get_seq_length(), key_states.shape[-2]
        need = n + new
        if not self._holds_prefix(need, key_states):
            b, h, _, d = key_states.shape
            cap = need + max(64, need)  # doubling: a prompt of L tokens leaves room for L more
            kb = key_states.new_empty((b, h, cap, d))
            vb = value_states.new_empty((b, h, cap, value_states.shape[-1]))
            if n:
                assert self.keys is not None and self.values is not None  # n > 0: initialised and filled
                kb[:, :, :n].copy_(self.keys)
                vb[:, :, :n].copy_(self.values)
            self._kbuf, self._vbuf = kb, vb
        assert self._kbuf is not None and self._vbuf is not None  # set just above when absent
        self._kbuf[:, :, n:need].copy_(key_states)
        self._vbuf[:, :, n:need].copy_(value_states)
        self.keys, self.values = self._kbuf[:, :, :need], self._vbuf[:, :, :need]
        return self.keys, self.values


def growing_cache(config: PretrainedConfig) -> DynamicCache:
    """A :class:`transformers.DynamicCache` for ``config`` with :class:`GrowingLayer` layers.

    Raises:
        ValueError: the config asks for layers other than full-attention ``DynamicLayer``
            ones (sliding windows, linear attention), which this cache does not cover.
    """
    cache = DynamicCache(config=config)
    kinds = {type(layer).__name__ for layer in cache.layers}
    if not cache.layers or kinds - {"DynamicLayer"}:
        raise ValueError(f"growing_cache covers full-attention DynamicLayer layers only, the config has {sorted(kinds)}")
    layers: list[CacheLayerMixin | Any] = [GrowingLayer() for _ in cache.layers]  # (the attribute's declared type)
    cache.layers = layers
    return cache
