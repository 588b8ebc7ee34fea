"""PyramidDrop against a stage-by-stage computation with the stock eager model, and its lambda solve."""

from __future__ import annotations

import pytest
import torch

from altp.flops import MODEL_SHAPES, LLMShape, prefill_flops
from altp.pruning import ScheduleInfo, kept_count
from altp.pruning.engine import PruningEngine
from baselines.fastv import FastVPruner
from baselines.pyramid_drop import PyramidDropPruner, solve_lambda
from tests.test_engine import GRID, PREFIX, V, prompt, stock_layers, tiny_lm

LAYERS = 6


def _gather_seq(h: torch.Tensor, rel: torch.Tensor, cur: int) -> torch.Tensor:
    """Keep the prefix, the visual tokens ``rel`` (B, n) of the ``cur`` present, and everything after."""
    b, length, d = h.shape
    idx = torch.cat(
        [
            torch.arange(PREFIX).expand(b, -1),
            rel + PREFIX,
            torch.arange(PREFIX + cur, length).expand(b, -1),
        ],
        dim=1,
    )
    return torch.gather(h, 1, idx[..., None].expand(-1, -1, d))


def _oracle(lm, seq, layers, counts, kept_rel=None):
    """Upstream PDrop with stock eager layers: at each stage layer, rank by that layer's own
    attention (last row, mean over heads, image columns) on the sequence pruned so far, positions
    0..L-1 renumbered. ``kept_rel`` replays given per-stage choices instead of ranking.

    Returns (per-stage original ids (B, n_s), per-stage relative choices, (B, L', vocab) logits).
    """
    b = seq.shape[0]
    ids, h, start, cur = torch.arange(V).expand(b, -1), seq, 0, V
    stage_ids, rels = [], []
    with torch.inference_mode():
        for s, (lay, n) in enumerate(zip(layers, counts, strict=True)):
            h_in, attn = stock_layers(
                lm, h, start, lay + 1, attn_of=lay
            )  # positions 0..L-1: renumbered
            h_in = stock_layers(lm, h, start, lay)[0]  # input of the stage layer
            if kept_rel is None:
                row = attn[:, :, -1, PREFIX : PREFIX + cur].mean(dim=1)  # (B, cur)
                rel = row.topk(n, dim=1).indices.sort(dim=1).values
            else:
                rel = kept_rel[s]
            ids = torch.gather(ids, 1, rel)
            stage_ids.append(ids)
            rels.append(rel)
            h, start, cur = _gather_seq(h_in, rel, cur), lay, n
        out = stock_layers(lm, h, start, LAYERS)[0]
        return stage_ids, rels, lm.lm_head(lm.model.norm(out))


def _spy(pruner):
    """Record the original ids each stage keeps."""
    seen = []
    select = pruner.select

    def wrapped(ctx):
        sel = select(ctx)
        seen.append(torch.gather(ctx.visual_ids, 1, sel.indices))
        return sel

    pruner.select = wrapped
    return seen


@pytest.mark.parametrize("layers, lambda_", [([1, 3, 4], 0.5), (None, None), ([2, 5], 0.6)])
def test_every_stage_keeps_the_top_k_of_the_stage_layers_own_attention(layers, lambda_):
    x = prompt(batch=2)
    pruner = PyramidDropPruner(keep=0.5, layers=layers, lambda_=lambda_)
    seen = _spy(pruner)
    got, rec = PruningEngine(lm=tiny_lm("sdpa", layers=LAYERS), pruner=pruner).prefill(
        inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID
    )
    lam = rec.extras[0]["lambda"]
    counts = [kept_count(lam ** (s + 1), V) for s in range(len(rec.stage_layers))]
    assert rec.kept_per_stage == counts
    if layers is None:
        assert rec.stage_layers == [2, 3, 4]  # upstream [8, 16, 24] of 32, scaled to 6 layers
    want_ids, _, want_logits = _oracle(tiny_lm("eager", layers=LAYERS), x, rec.stage_layers, counts)
    assert [s.tolist() for s in seen] == [w.tolist() for w in want_ids]
    assert rec.kept_tokens == want_ids[0].tolist()
    assert rec.kept_tokens_per_stage == [[w[b].tolist() for w in want_ids] for b in range(2)]
    assert rec.extras == [{"lambda": lam}] * 2  # the runner reads the solved lambda from here
    torch.testing.assert_close(got, want_logits, rtol=1e-4, atol=1e-5)


def test_cached_decoding_equals_stock_recomputation_with_renumbered_positions():
    # Upstream decodes token j at (prompt length kept in that layer range) + j: positions stay
    # contiguous in every range, which the stock model gives when run on the pruned sequence.
    x, steps = prompt(), 5
    pruner = PyramidDropPruner(keep=0.5, layers=[1, 3, 4], lambda_=0.5)
    seen = _spy(pruner)
    out = PruningEngine(lm=tiny_lm("sdpa", layers=LAYERS), pruner=pruner).generate(
        inputs_embeds=x,
        visual_start=PREFIX,
        num_visual=V,
        grid=GRID,
        max_new_tokens=steps,
        eos_token_id=None,
    )
    lm = tiny_lm("eager", layers=LAYERS)
    _, rels, _ = _oracle(lm, x, [1, 3, 4], [8, 4, 2])
    assert [r.tolist() for r in rels] == [
        torch.searchsorted(prev, s).tolist()
        for prev, s in zip([torch.arange(V)[None], *seen[:-1]], seen, strict=True)
    ]
    seq, toks = x, []
    for _ in range(steps):
        tok = _oracle(lm, seq, [1, 3, 4], [8, 4, 2], kept_rel=rels)[2][:, -1].argmax(-1)
        toks.append(int(tok))
        with torch.inference_mode():
            seq = torch.cat([seq, lm.get_input_embeddings()(tok[:, None])], dim=1)
    assert out.tokens[0].tolist() == toks


# -- schedule and lambda ----------------------------------------------------------------------------------
def _info(num_layers=32, v=576, text=45, d=4096, m=11008):
    return ScheduleInfo(
        num_visual=v,
        num_text=text,
        num_layers=num_layers,
        hidden_size=d,
        intermediate_size=m,
        grid=(24, 24) if v == 576 else (v, 1),
    )


@pytest.mark.parametrize("lam, want", [(0.5, [288, 144, 72]), (0.3, [172, 51, 15])])
def test_explicit_lambda_uses_upstream_int_of_v_times_ratio(lam, want):
    # int(576 * 0.3) = 172, int(576 * 0.09) = 51, int(576 * 0.027) = 15 (upstream truncates each from V).
    stages = PyramidDropPruner(keep=0.1, layers=[8, 16, 24], lambda_=lam).schedule(_info())
    assert [s.layer for s in stages] == [8, 16, 24]
    assert [s.n_keep for s in stages] == want
    assert all(s.score_layer == s.layer and s.renumber_positions for s in stages)


def test_default_layers_are_fastvs_k_then_upstreams_8_16_24_scaled_with_depth():
    p = PyramidDropPruner(keep=0.5)
    assert p.stage_layers(32) == [2, 8, 16, 24] and p.stage_layers(8) == [2, 4, 6]
    assert PyramidDropPruner(keep=0.5, match_layer=3).stage_layers(32) == [3, 8, 16, 24]
    with pytest.raises(ValueError, match="ascending"):
        PyramidDropPruner(keep=0.5, layers=[4, 4]).stage_layers(8)


def test_one_stage_at_the_match_layer_solves_lambda_to_the_kept_fraction():
    # A single PDrop stage at FastV's layer keeps V*lambda from there on: equal FLOPs iff V*lambda = floor(rV).
    lam = solve_lambda(keep=0.3, layers=[2], info=_info(num_layers=8, v=100))
    assert lam == pytest.approx(30 / 100, abs=1e-9)


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("num_text", [35, 45, 80])
def test_one_stage_at_the_match_layer_keeps_exactly_floor_keep_v(keep, num_text):
    # Same tokens as FastV at K=2, not one fewer from a lambda a float hair below floor(rV)/V.
    info = _info(num_layers=8, v=576, text=num_text, d=128, m=256)
    (stage,) = PyramidDropPruner(keep=keep, layers=[2]).schedule(info)
    assert stage.n_keep == kept_count(keep, 576)  # FastV's count at the same keep


@pytest.mark.parametrize(
    "keep, layers", [(0.5, None), (0.1, [2, 8, 16, 24]), (0.25, [2, 8, 16, 24])]
)
def test_solved_lambda_matches_single_stage_flops(keep, layers):
    info = _info()
    p = PyramidDropPruner(keep=keep, layers=layers)
    stages = p.schedule(info)
    lam = solve_lambda(keep=keep, layers=[s.layer for s in stages], info=info)
    assert 0 < lam < 1 and "lambda" not in p.hparams()  # solved per sequence, never a hyper-parameter
    shape = MODEL_SHAPES["glamm"]
    n = info.num_text + info.num_visual
    single = prefill_flops(n, [(2, info.num_text + kept_count(keep, 576))], shape)
    multi = prefill_flops(
        n, [(s.layer, info.num_text + 576 * lam ** (k + 1)) for k, s in enumerate(stages)], shape
    )
    assert multi == pytest.approx(single, rel=1e-9)
    # The integer schedule lands within one token per stage of the continuous one.
    assert [s.n_keep for s in stages] == [kept_count(lam ** (k + 1), 576) for k in range(len(stages))]


def test_unreachable_flops_target_says_how_to_fix():
    # Upstream's 8 unpruned layers of 32 already cost more than FastV at keep 0.1.
    with pytest.raises(ValueError, match=r"cannot match.*layers starting at 2"):
        PyramidDropPruner(keep=0.1, layers=[8, 16, 24]).schedule(_info())


@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
def test_default_layers_reach_equal_flops_at_every_paper_keep(keep):
    stages = PyramidDropPruner(keep=keep).schedule(_info())
    assert [s.layer for s in stages] == [2, 8, 16, 24]


def test_keep_all_schedules_no_drop_and_lambda_is_recorded():
    stages = PyramidDropPruner(keep=1.0).schedule(_info(num_layers=8, d=64, m=128))
    assert [s.n_keep for s in stages] == [576] * 3
    hp = PyramidDropPruner(keep=0.5, lambda_=0.5).hparams()
    assert hp["lambda_"] == 0.5 and hp["keep"] == 0.5


def test_solve_uses_the_models_shape():
    a = solve_lambda(keep=0.5, layers=[8, 16, 24], info=_info())
    b = solve_lambda(keep=0.5, layers=[8, 16, 24], info=_info(m=14336))
    assert a != b
    assert (
        LLMShape(hidden_size=4096, intermediate_size=11008, num_layers=32) == MODEL_SHAPES["glamm"]
    )


# -- ablation switches: score (own | previous) x renumber (true | false) ----------------------------------
def test_previous_layer_score_without_renumbering_is_fastv():
    # One stage at FastV's K with FastV's count, scored by layer K-1 at original positions: FastV exactly.
    # Checked against FastV through the engine and against test_fastv's eager oracles (independent of both).
    from tests.test_fastv import _oracle_kept, _oracle_logits

    k, keep, x = 2, 0.25, prompt(batch=2)
    pdrop = PyramidDropPruner(keep=keep, layers=[k], score="previous", renumber=False)
    fastv = FastVPruner(keep=keep, layer=k)
    got, rec = PruningEngine(lm=tiny_lm("sdpa", layers=LAYERS), pruner=pdrop).prefill(
        inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID
    )
    want, want_rec = PruningEngine(lm=tiny_lm("sdpa", layers=LAYERS), pruner=fastv).prefill(
        inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID
    )
    assert rec.kept_per_stage == want_rec.kept_per_stage == [kept_count(keep, V)]
    assert rec.kept_tokens == want_rec.kept_tokens
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    eager = tiny_lm("eager", layers=LAYERS)
    kept = _oracle_kept(eager, x, k, kept_count(keep, V))
    assert rec.kept_tokens == kept.tolist()
    torch.testing.assert_close(got, _oracle_logits(eager, x, kept, k), rtol=1e-4, atol=1e-5)
    # Decoding too: the generated tokens are FastV's.
    outs = [
        PruningEngine(lm=tiny_lm("sdpa", layers=LAYERS), pruner=p).generate(
            inputs_embeds=x[:1], visual_start=PREFIX, num_visual=V, grid=GRID, max_new_tokens=6,
            eos_token_id=None,
        )  # fmt: skip
        for p in (PyramidDropPruner(keep=keep, layers=[k], score="previous", renumber=False), fastv)
    ]
    assert outs[0].tokens.tolist() == outs[1].tokens.tolist()


@pytest.mark.parametrize("score", ["own", "previous"])
@pytest.mark.parametrize("renumber", [True, False])
def test_each_switch_changes_only_what_it_names(score, renumber):
    # score picks the ranking layer (K's own attention or K-1's); renumber picks the positions the
    # layers from K on see (0..L'-1 or the original ids). Oracles: eager attention of the named
    # layer, then stock layers on the kept tokens at the named positions.
    from tests.test_fastv import _oracle_kept, _oracle_logits

    k, keep, x = 2, 0.25, prompt(batch=2)
    n = kept_count(keep, V)
    got, rec = PruningEngine(
        lm=tiny_lm("sdpa", layers=LAYERS),
        pruner=PyramidDropPruner(keep=keep, layers=[k], score=score, renumber=renumber),
    ).prefill(inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID)
    eager = tiny_lm("eager", layers=LAYERS)
    by_score = {"own": _oracle(eager, x, [k], [n])[0][0], "previous": _oracle_kept(eager, x, k, n)}
    kept = by_score[score]
    assert by_score["own"].tolist() != by_score["previous"].tolist()  # the case tells them apart
    assert rec.kept_tokens == kept.tolist() and rec.kept_per_stage == [n]
    by_positions = {
        True: _oracle(eager, x, [k], [n], kept_rel=[kept])[2],
        False: _oracle_logits(eager, x, kept, k),
    }
    assert not torch.allclose(by_positions[True], by_positions[False], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, by_positions[renumber], rtol=1e-4, atol=1e-5)


def test_the_switches_shape_every_stage_and_are_recorded():
    p = PyramidDropPruner(keep=0.1, lambda_=0.5, score="previous", renumber=False)
    stages = p.schedule(_info(num_layers=8, d=64, m=128))
    assert [(s.layer, s.score_layer, s.renumber_positions) for s in stages] == [
        (2, 1, False), (4, 3, False), (6, 5, False)
    ]  # fmt: skip
    assert (p.hparams()["score"], p.hparams()["renumber"]) == ("previous", False)
    up = PyramidDropPruner(keep=0.1).hparams()
    assert (up["score"], up["renumber"]) == ("own", True)  # upstream's behaviour by default


@pytest.mark.parametrize(
    "kw, msg",
    [({"score": "next"}, "score must be one of own, previous"), ({"renumber": "no"}, "true or false")],
)
def test_bad_switch_values_say_what_is_valid(kw, msg):
    with pytest.raises(ValueError, match=msg):
        PyramidDropPruner(keep=0.5, **kw)
