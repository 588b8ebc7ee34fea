"""PruningEngine on tiny random Llamas: unpruned equivalence, cached == uncached, records, misuse.

The helpers here (tiny models, a stock-layer oracle) are shared by the pruner tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from altp.pruners import available_pruners, build_pruner
from altp.pruning import PruneContext, Pruner, Selection, kept_count
from altp.pruning.base import VisionSignals
from altp.pruning.engine import PruningEngine

PREFIX, GRID, SUFFIX = 5, (4, 4), 7
V = GRID[0] * GRID[1]
N = PREFIX + V + SUFFIX
PRUNERS = [p for p in available_pruners() if p != "none"]


def tiny_lm(attn: str = "sdpa", *, layers: int = 6, seed: int = 0) -> LlamaForCausalLM:
    """A random fp32 Llama with GQA (4 query heads on 2 kv heads); the same seed gives the same weights."""
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32).eval()


def prompt(batch: int = 1, seed: int = 1) -> torch.Tensor:
    """(B, N, 64) random prompt embeddings (scaled like real ones so that attention is peaked)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N, 64, generator=g)


def synthetic_prep(pruner: Pruner | None, batch: int = 1) -> list:
    """What ``prepare`` returns for a synthetic image of the tiny grid (14 px patches), per sample."""
    rng = np.random.default_rng(0)
    img = np.zeros((GRID[0] * 14, GRID[1] * 14, 3), np.uint8)
    img[:, : GRID[1] * 7] = rng.integers(
        0, 255, (GRID[0] * 14, GRID[1] * 7, 3)
    )  # textured left half
    img[:, GRID[1] * 7 :] = 120
    return [None if pruner is None else pruner.prepare(img, GRID) for _ in range(batch)]


def stock_layers(
    lm: LlamaForCausalLM,
    h: torch.Tensor,
    start: int,
    stop: int,
    position_ids: torch.Tensor | None = None,
    attn_of: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stock decoder layers [start, stop) over ``h`` (B, L, D) with an explicit causal mask.

    ``position_ids`` (B or 1, L) default to 0..L-1. ``LlamaModel.forward`` cannot be the oracle:
    transformers 5.x reads any step != 1 in ``position_ids`` as the start of a new packed
    sequence, and its ``output_attentions`` capture assumes the full layer stack.

    Returns the output of layer stop-1 (no final norm) and, when ``attn_of`` is a layer in the
    range, that layer's (B, H, L, L) attention weights (needs an eager model).
    """
    n = h.shape[1]
    pos = torch.arange(n)[None] if position_ids is None else position_ids
    pe = lm.model.rotary_emb(h, pos)
    mask = torch.full((n, n), torch.finfo(h.dtype).min).triu(1)[None, None]
    seen: list[torch.Tensor] = []
    hook = None
    if attn_of is not None:
        hook = lm.model.layers[attn_of].self_attn.register_forward_hook(
            lambda m, i, o: seen.append(o[1])
        )
    try:
        for layer in list(lm.model.layers)[start:stop]:
            h = layer(h, attention_mask=mask, position_embeddings=pe)
    finally:
        if hook is not None:
            hook.remove()
    return h, (seen[0] if seen else None)


def build(name: str, keep: float, **kw) -> Pruner | None:
    return build_pruner(name, keep=keep, **kw)


def synthetic_vision(pruner: Pruner | None, batch: int = 1) -> VisionSignals | None:
    """Random vision-tower signals of the tiny grid (32-d features, 8-d keys, a projector into 64-d), for a
    pruner that reads them (VisionZip); None otherwise. Seeded: the same for every call."""
    if pruner is None or not pruner.needs_vision:
        return None
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(3)
    proj = torch.nn.Linear(32, 64).eval()
    return VisionSignals(cls_attention=torch.rand(batch, V, generator=g), features=torch.randn(batch, V, 32, generator=g),
                         keys=torch.randn(batch, V, 8, generator=g), project=proj)  # fmt: skip


def engine_prefill(lm, pruner, embeds, **kw):
    return PruningEngine(lm=lm, pruner=pruner).prefill(
        inputs_embeds=embeds,
        visual_start=PREFIX,
        num_visual=V,
        grid=GRID,
        prep=synthetic_prep(pruner, embeds.shape[0]),
        vision=synthetic_vision(pruner, embeds.shape[0]),
        **kw,
    )


def engine_generate(lm, pruner, embeds, *, new: int = 6, use_cache: bool = True, seed: int = 0):
    return PruningEngine(lm=lm, pruner=pruner).generate(
        inputs_embeds=embeds,
        visual_start=PREFIX,
        num_visual=V,
        grid=GRID,
        prep=synthetic_prep(pruner, embeds.shape[0]),
        max_new_tokens=new,
        eos_token_id=None,
        use_cache=use_cache,
        seed=seed,
        vision=synthetic_vision(pruner, embeds.shape[0]),
    )


# -- keep everything == the stock model ----------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["none", *PRUNERS])
def test_keep_all_reproduces_stock_logits(name, attn):
    lm = tiny_lm(attn)
    x = prompt()
    with torch.inference_mode():
        want = lm(inputs_embeds=x).logits  # (1, N, vocab)
    got, rec = engine_prefill(lm, build(name, 1.0), x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert rec.kept_tokens == [list(range(V))]


@pytest.mark.parametrize("name", PRUNERS)
def test_sdpa_and_eager_agree_when_pruning(name):
    x = prompt()
    a, rec_a = engine_prefill(tiny_lm("sdpa"), build(name, 0.5), x)
    b, rec_b = engine_prefill(tiny_lm("eager"), build(name, 0.5), x)
    assert rec_a.kept_tokens == rec_b.kept_tokens
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# -- cached decoding == recomputation without cache ----------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", ["none", *PRUNERS])
def test_cached_decoding_equals_uncached_recomputation(name, batch):
    lm = tiny_lm()
    x = prompt(batch)
    cached = engine_generate(lm, build(name, 0.25) if name != "none" else None, x, use_cache=True)
    fresh = engine_generate(lm, build(name, 0.25) if name != "none" else None, x, use_cache=False)
    assert cached.tokens.shape == (batch, 6)
    assert torch.equal(cached.tokens, fresh.tokens)
    torch.testing.assert_close(cached.step_hidden, fresh.step_hidden, rtol=1e-4, atol=1e-5)
    assert cached.record.kept_tokens == fresh.record.kept_tokens


def test_step_hidden_is_the_normed_state_whose_logits_gave_each_token():
    lm = tiny_lm()
    out = engine_generate(lm, build("fastv", 0.5), prompt())
    with torch.inference_mode():
        logits = lm.lm_head(out.step_hidden)  # (1, T, vocab)
    assert torch.equal(logits.argmax(-1), out.tokens)
    # Final RMSNorm output with a unit weight has unit RMS.
    rms = out.step_hidden.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-3, atol=1e-3)


def test_generation_stops_at_eos_and_includes_it():
    lm = tiny_lm()
    x = prompt()
    free = engine_generate(lm, build("fastv", 0.5), x, new=6)
    eos = int(free.tokens[0, 2])
    first = int((free.tokens[0] == eos).nonzero()[0])
    out = PruningEngine(lm=lm, pruner=build("fastv", 0.5)).generate(
        inputs_embeds=x,
        visual_start=PREFIX,
        num_visual=V,
        grid=GRID,
        max_new_tokens=6,
        eos_token_id=eos,
    )
    assert out.tokens[0].tolist() == free.tokens[0, : first + 1].tolist()


# -- records -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
@pytest.mark.parametrize("name", [p for p in PRUNERS if p != "pdrop"])
def test_first_stage_keeps_floor_keep_v_sorted_and_deterministic(name, keep):
    lm = tiny_lm()
    x = prompt(2)
    _, r1 = engine_prefill(lm, build(name, keep), x, seed=3)
    _, r2 = engine_prefill(lm, build(name, keep), x, seed=3)
    n = kept_count(keep, V)
    assert r1.kept_per_stage[0] == n
    # A merging pruner (VisionZip) keeps n - M tokens as they are and makes M by merging.
    merged = [len(m[0]) for m in r1.merged_tokens_per_stage] or [0, 0]
    for row, m in zip(r1.kept_tokens, merged, strict=True):
        assert len(row) + m == n and row == sorted(set(row)) and 0 <= row[0] and row[-1] < V
    assert r1.kept_tokens == r2.kept_tokens and r1.extras == r2.extras
    assert r1.merged_tokens_per_stage == r2.merged_tokens_per_stage
    at_input = build(name, keep).layer == 0  # VisionZip, DivPrune prune before layer 0
    assert r1.stage_layers == [0 if at_input else 2] and r1.select_ms >= 0.0
    assert r1.hparams["keep"] == keep


def test_unpruned_record_lists_every_token():
    _, rec = engine_prefill(tiny_lm(), None, prompt(2))
    assert (
        rec.kept_tokens == [list(range(V))] * 2 and rec.kept_per_stage == [] and rec.hparams == {}
    )
    assert rec.kept_tokens_per_stage == [[], []]  # no stage, nothing per stage


# -- misuse --------------------------------------------------------------------------------------------
class _Bad(Pruner):
    name = "bad"
    needs_scores = False

    def __init__(self, *, keep: float, answer: torch.Tensor) -> None:
        super().__init__(keep=keep)
        self.answer = answer

    def select(self, ctx: PruneContext) -> Selection:
        return Selection(indices=self.answer)


@pytest.mark.parametrize(
    "answer, msg",
    [
        (torch.tensor([[3, 1, 2, 4, 5, 6, 7, 8]]), "not sorted"),
        (torch.tensor([[1, 1, 2, 3, 4, 5, 6, 7]]), "not sorted"),
        (torch.tensor([[1, 2, 3, 4, 5, 6, 7, 16]]), r"in \[0, 16\)"),
        (torch.tensor([[0, 1, 2]]), r"\(B, n_keep\)"),
        (torch.tensor([[0.0, 1, 2, 3, 4, 5, 6, 7]]), "integer"),
    ],
)
def test_invalid_selection_names_the_pruner(answer, msg):
    with pytest.raises(ValueError, match=msg) as err:
        engine_prefill(tiny_lm(), _Bad(keep=0.5, answer=answer), prompt())
    assert "_Bad" in str(err.value)


def test_visual_span_and_grid_are_checked():
    eng = PruningEngine(lm=tiny_lm(), pruner=None)
    with pytest.raises(ValueError, match="does not fit"):
        eng.prefill(inputs_embeds=prompt(), visual_start=N - 3, num_visual=V, grid=GRID)
    with pytest.raises(ValueError, match="grid"):
        eng.prefill(inputs_embeds=prompt(), visual_start=PREFIX, num_visual=V, grid=(3, 4))


def test_unsupported_attention_is_refused():
    lm = tiny_lm()
    lm.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="sdpa"):
        PruningEngine(lm=lm, pruner=None)
