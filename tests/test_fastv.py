"""FastV against independent computations with the stock eager model."""

from __future__ import annotations

import pytest
import torch

from altp.pruning.engine import PruningEngine
from baselines.fastv import FastVPruner
from tests.test_engine import GRID, PREFIX, N, V, prompt, stock_layers, tiny_lm


def _oracle_kept(lm, x: torch.Tensor, k: int, n_keep: int) -> torch.Tensor:
    """Top-k visual columns of the eager attention weights of layer K-1, last row, mean over heads."""
    with torch.inference_mode():
        attn = lm(inputs_embeds=x, output_attentions=True).attentions[k - 1]  # (B, H, N, N)
    row = attn[:, :, -1, PREFIX : PREFIX + V].mean(dim=1)  # (B, V)
    return row.topk(n_keep, dim=1).indices.sort(dim=1).values


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("keep", [0.25, 0.5])
def test_kept_set_is_top_k_of_eager_attention_of_layer_k_minus_1(k, keep):
    x = prompt(batch=2)
    want = _oracle_kept(tiny_lm("eager"), x, k, int(keep * V))
    _, rec = PruningEngine(lm=tiny_lm("sdpa"), pruner=FastVPruner(keep=keep, layer=k)).prefill(
        inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID
    )
    assert rec.kept_tokens == want.tolist()
    assert rec.stage_layers == [k] and rec.kept_per_stage == [int(keep * V)]


def _oracle_logits(lm, seq: torch.Tensor, kept: torch.Tensor, k: int) -> torch.Tensor:
    """Stock layers 0..K-1 on ``seq``; then the kept prompt tokens and every token after the prompt
    through layers K.. at their ORIGINAL positions. Returns (B, L', vocab)."""
    b, length, _ = seq.shape
    with torch.inference_mode():
        h = stock_layers(lm, seq, 0, k)[0]  # input of layer K, (B, L, D)
        idx = torch.cat(
            [
                torch.arange(PREFIX).expand(b, -1),
                kept + PREFIX,
                torch.arange(PREFIX + V, length).expand(b, -1),
            ],
            dim=1,
        )
        h = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))
        out = stock_layers(lm, h, k, lm.config.num_hidden_layers, position_ids=idx)[0]
        return lm.lm_head(lm.model.norm(out))


def test_prefill_logits_equal_stock_layers_on_the_kept_tokens_at_original_positions():
    lm, x, k = tiny_lm("eager"), prompt(batch=2), 2
    got, rec = PruningEngine(lm=lm, pruner=FastVPruner(keep=0.25, layer=k)).prefill(
        inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID
    )
    want = _oracle_logits(lm, x, torch.tensor(rec.kept_tokens), k)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cached_greedy_decoding_equals_stock_recomputation_with_positions_n_plus_j():
    # Upstream FastV decodes token j at position N + j in every layer (its generate() counts
    # the unpruned prompt); the oracle runs stock layers over prompt + generated ids each step.
    lm, x, k, steps = tiny_lm("eager"), prompt(), 2, 5
    out = PruningEngine(lm=tiny_lm("sdpa"), pruner=FastVPruner(keep=0.25, layer=k)).generate(
        inputs_embeds=x,
        visual_start=PREFIX,
        num_visual=V,
        grid=GRID,
        max_new_tokens=steps,
        eos_token_id=None,
    )
    kept = torch.tensor(out.record.kept_tokens)
    seq, toks = x, []
    emb = lm.get_input_embeddings()
    for _ in range(steps):
        tok = _oracle_logits(lm, seq, kept, k)[:, -1].argmax(-1)
        toks.append(int(tok))
        with torch.inference_mode():
            seq = torch.cat([seq, emb(tok[:, None])], dim=1)
    assert out.tokens[0].tolist() == toks
    assert seq.shape[1] == N + steps
