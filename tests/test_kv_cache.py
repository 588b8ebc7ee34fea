"""The engine's in-place KV cache holds exactly what the stock ``DynamicLayer`` holds, without re-copying."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicLayer, LlamaConfig, MistralConfig

from altp.pruning._kv_cache import GrowingLayer, growing_cache


def test_growing_layer_equals_the_stock_layer_through_appends_row_drops_and_crops() -> None:
    torch.manual_seed(0)
    ours, stock = GrowingLayer(), DynamicLayer()

    def append(n: int) -> None:
        b = stock.keys.shape[0] if stock.is_initialized and stock.keys.numel() else 4  # pyright: ignore[reportOptionalMemberAccess]
        k, v = torch.randn(b, 2, n, 8), torch.randn(b, 2, n, 8)
        got, want = ours.update(k, v), stock.update(k, v)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))

    append(37)  # the prompt
    base = ours.keys.data_ptr()  # pyright: ignore[reportOptionalMemberAccess]
    for _ in range(20):
        append(1)
    assert ours.keys.data_ptr() == base  # the steps wrote into the first buffer: no copy
    assert not ours.keys.is_contiguous()  # a view of the filled prefix  # pyright: ignore[reportOptionalMemberAccess]
    for layer in (ours, stock):
        layer.batch_select_indices(torch.tensor([0, 2, 3]))  # a row left the batch
    append(1)
    for layer in (ours, stock):
        layer.crop(-3)
    append(1)
    append(60)  # past the spare room: a new buffer
    assert ours.get_seq_length() == stock.get_seq_length() == 37 + 20 + 1 - 3 + 1 + 60
    assert torch.equal(ours.keys, stock.keys) and torch.equal(ours.values, stock.values)  # pyright: ignore[reportArgumentType]


def test_growing_cache_replaces_every_layer_and_rejects_sliding_windows() -> None:
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, vocab_size=50)
    cache = growing_cache(cfg)
    assert len(cache.layers) == 3 and all(isinstance(layer, GrowingLayer) for layer in cache.layers)
    sliding = MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=2, vocab_size=50, sliding_window=16)  # fmt: skip
    with pytest.raises(ValueError, match="full-attention DynamicLayer"):
        growing_cache(sliding)
