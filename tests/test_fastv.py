"""FastV against independent computations with the stock eager model."""

from __future__ import annotations

import pytest
import torch

from altp.pruning import kept_count
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
    want = _oracle_kept(tiny_lm("eager"), x, k, kept_count(keep, V))
    _, rec = PruningEngine(lm=tiny_lm("sdpa"), pruner=FastVPruner(keep=keep, layer=k)).prefill(
        inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID
    )
    assert rec.kept_tokens == want.tolist()
    assert rec.stage_layers == [k] and rec.kept_per_stage == [kept_count(keep, V)]


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


# -- reselect=per_step: upstream FastV's uncached generate ---------------------------------------------
class _SpyFastV(FastVPruner):
    """FastV that logs every kept set it chooses (original visual ids, (B, n_keep)) in call order."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.chosen: list[list[list[int]]] = []

    def select(self, ctx):
        sel = super().select(ctx)
        self.chosen.append(torch.gather(ctx.visual_ids, 1, sel.indices).tolist())
        return sel


def _per_step_oracle(lm, x: torch.Tensor, k: int, n_keep: int, steps: int):
    """Upstream's loop, computed directly: per step, the stock eager model's layer K-1 attention over
    the whole sequence (output_attentions), newest row, mean over heads, top-k of the visual columns;
    then stock layers K.. on the gathered tokens at their original positions.

    Returns (tokens (B, steps), logits (B, steps, vocab), kept sets [step][b][n_keep]).
    """
    emb = lm.get_input_embeddings()
    seq, toks, logits, sets = x, [], [], []
    for _ in range(steps):
        kept = _oracle_kept(lm, seq, k, n_keep)  # (B, n_keep): row -1 is the newest token
        step_logits = _oracle_logits(lm, seq, kept, k)[:, -1]  # (B, vocab)
        tok = step_logits.argmax(-1)
        toks.append(tok)
        logits.append(step_logits)
        sets.append(kept.tolist())
        with torch.inference_mode():
            seq = torch.cat([seq, emb(tok[:, None])], dim=1)
    return torch.stack(toks, 1), torch.stack(logits, 1), sets


def _generate(lm, pruner, x, steps, **kw):
    return PruningEngine(lm=lm, pruner=pruner).generate(
        inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID, max_new_tokens=steps,
        eos_token_id=None, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_per_step_reselection_equals_direct_eager_recomputation(k, attn):
    x, steps, keep = prompt(batch=2), 6, 0.25
    want_tok, want_logits, want_sets = _per_step_oracle(tiny_lm("eager"), x, k, kept_count(keep, V), steps)
    # The oracle must actually move the kept set, or this test could not tell per_step from prefill.
    assert any(len({tuple(s[b]) for s in want_sets}) > 1 for b in range(2))
    spy = _SpyFastV(keep=keep, layer=k, reselect="per_step")
    lm = tiny_lm(attn)
    out = _generate(lm, spy, x, steps)  # use_cache left to the engine: per_step picks the uncached path
    assert spy.chosen == want_sets  # one selection per step, prefill first
    assert torch.equal(out.tokens, want_tok)
    with torch.inference_mode():
        got_logits = lm.lm_head(out.step_hidden)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)
    # The record keeps the prefill's set and summarises the others.
    assert out.record.kept_tokens == want_sets[0]
    for b, extras in enumerate(out.record.extras):
        sets = [tuple(s[b]) for s in want_sets]
        assert extras == {
            "reselect_steps": steps,
            "reselect_distinct_sets": len(set(sets)),
            "reselect_union": len(set().union(*sets)),
        }


def test_per_step_with_keep_all_equals_unpruned_generation():
    lm, x = tiny_lm(), prompt(batch=2)
    full = _generate(lm, None, x, 6)
    every = _generate(lm, FastVPruner(keep=1.0, reselect="per_step"), x, 6)
    assert torch.equal(every.tokens, full.tokens)
    torch.testing.assert_close(every.step_hidden, full.step_hidden, rtol=1e-4, atol=1e-5)
    assert every.record.extras[0]["reselect_distinct_sets"] == 1


def test_per_step_first_step_is_the_prefill_modes():
    lm, x = tiny_lm(), prompt(batch=2)
    once = _generate(lm, FastVPruner(keep=0.25), x, 6)
    each = _generate(lm, FastVPruner(keep=0.25, reselect="per_step"), x, 6)
    assert torch.equal(each.tokens[:, 0], once.tokens[:, 0])
    torch.testing.assert_close(each.step_hidden[:, 0], once.step_hidden[:, 0], rtol=1e-5, atol=1e-6)
    assert each.record.kept_tokens == once.record.kept_tokens
    assert once.record.extras == [{}, {}]  # the default mode's record is unchanged


def test_per_step_stops_counting_at_eos():
    lm, x = tiny_lm(), prompt()
    free = _generate(lm, FastVPruner(keep=0.25, reselect="per_step"), x, 6)
    eos = int(free.tokens[0, 2])
    first = int((free.tokens[0] == eos).nonzero()[0])
    out = PruningEngine(lm=lm, pruner=FastVPruner(keep=0.25, reselect="per_step")).generate(
        inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID, max_new_tokens=6, eos_token_id=eos)
    assert out.tokens[0].tolist() == free.tokens[0, : first + 1].tolist()
    assert out.record.extras[0]["reselect_steps"] == first + 1


def test_per_step_refuses_the_cache_and_bad_modes():
    with pytest.raises(ValueError, match="use_cache=False"):
        _generate(tiny_lm(), FastVPruner(keep=0.25, reselect="per_step"), prompt(), 3, use_cache=True)
    with pytest.raises(ValueError, match="prefill, per_step"):
        FastVPruner(keep=0.25, reselect="each")
    assert FastVPruner(keep=0.25, reselect="per_step").hparams()["reselect"] == "per_step"
    assert not FastVPruner(keep=0.25).reselects_per_step
