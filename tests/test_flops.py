"""Eq.-5 FLOPs in its three conventions (prompt, paper, generation): paper ratios, hand sums, shapes."""

from __future__ import annotations

import pytest

from altp.flops import (
    FLOPS_CONVENTIONS,
    MODEL_SHAPES,
    PAPER_TEXT_TOKENS,
    LLMShape,
    decode_flops,
    flops_ratio,
    generation_flops,
    layer_flops,
    paper_flops_ratio,
    prefill_flops,
    summarise_flops,
    uncached_generation_flops,
)

GLAMM = MODEL_SHAPES["glamm"]


@pytest.mark.parametrize(("kept", "paper_percent"), [(57, 20), (144, 33), (288, 55)])
def test_paper_ratios_for_glamm(kept: int, paper_percent: int) -> None:
    """Paper: remaining FLOPs 20 / 33 / 55 % at keep 0.1 / 0.25 / 0.5 (32 text tokens, K=2)."""
    ratio = flops_ratio(num_text=32, num_visual=576, visual_kept=[(2, kept)], shape=GLAMM)
    assert round(100 * ratio) == paper_percent


def test_layer_flops_by_hand() -> None:
    # n=1, d=4096, m=11008: 4*4096^2 + 2*1*4096 + 2*4096*11008
    #                     = 67_108_864 + 8_192 + 90_177_536
    assert layer_flops(1, 4096, 11008) == 157_294_592
    # n=10, d=2, m=3: 4*10*4 + 2*100*2 + 2*10*2*3 = 160 + 400 + 120
    assert layer_flops(10, 2, 3) == 680


TOY = LLMShape(hidden_size=2, intermediate_size=3, num_layers=4)  # f(n) = 4n^2 + 28n


def test_single_stage_hand_sum() -> None:
    # f(10) = 680, f(4) = 64 + 112 = 176; layer 0 at 10 tokens, layers 1-3 at 4.
    assert prefill_flops(10, [(1, 4)], TOY) == 680 + 3 * 176 == 1208
    assert prefill_flops(10, [], TOY) == 4 * 680
    # The paper's closed form (K f(n) + (T-K) f(n')) / (T f(n)) with K=1.
    ratio = flops_ratio(num_text=2, num_visual=8, visual_kept=[(1, 2)], shape=TOY)
    assert ratio == pytest.approx(1208 / 2720)


def test_multi_stage_hand_sum() -> None:
    # Tokens per layer 10, 6, 6, 2: f(6) = 144 + 168 = 312, f(2) = 16 + 56 = 72.
    assert prefill_flops(10, [(1, 6), (3, 2)], TOY) == 680 + 312 + 312 + 72 == 1376
    ratio = flops_ratio(num_text=2, num_visual=8, visual_kept=[(1, 4), (3, 0)], shape=TOY)
    assert ratio == pytest.approx(1376 / 2720)


def test_pyramid_drop_schedule_on_glamm() -> None:
    """PDrop at keep 0.5 with lambda 0.5: 288 / 144 / 72 visual tokens from layers 8 / 16 / 24."""
    d, m = 4096, 11008

    def f(n: int) -> int:  # eq. 5 written out in integers
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m

    expected = (8 * f(608) + 8 * f(320) + 8 * f(176) + 8 * f(104)) / (32 * f(608))
    ratio = flops_ratio(
        num_text=32, num_visual=576, visual_kept=[(8, 288), (16, 144), (24, 72)], shape=GLAMM
    )
    assert ratio == pytest.approx(expected, rel=1e-12)
    # Token counts alone give (608 + 320 + 176 + 104) / (4 * 608) = 0.497; the n^2 term lowers it.
    assert 0.48 < ratio < 0.497


def test_omg_llava_shape_and_budgets() -> None:
    omg = MODEL_SHAPES["omg_llava"]
    assert (omg.hidden_size, omg.intermediate_size, omg.num_layers) == (4096, 14336, 32)
    assert (GLAMM.hidden_size, GLAMM.intermediate_size, GLAMM.num_layers) == (4096, 11008, 32)
    d, m = 4096, 14336

    def f(n: int) -> int:
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m

    for kept in (25, 64):
        n, n_kept = 32 + 256, 32 + kept
        expected = (2 * f(n) + 30 * f(n_kept)) / (32 * f(n))
        got = flops_ratio(num_text=32, num_visual=256, visual_kept=[(2, kept)], shape=omg)
        assert got == pytest.approx(expected, rel=1e-12)
    # Our own number, not the paper's: 25 of 256 tokens at K=2 leaves about a quarter.
    r25 = flops_ratio(num_text=32, num_visual=256, visual_kept=[(2, 25)], shape=omg)
    assert round(100 * r25) == 25


def test_edge_cases() -> None:
    assert flops_ratio(num_text=32, num_visual=576, visual_kept=[], shape=GLAMM) == 1.0
    assert flops_ratio(num_text=32, num_visual=576, visual_kept=[(2, 576)], shape=GLAMM) == 1.0
    ratios = [
        flops_ratio(num_text=32, num_visual=576, visual_kept=[(2, k)], shape=GLAMM)
        for k in (0, 57, 144, 288, 576)
    ]
    assert ratios == sorted(ratios) and len(set(ratios)) == 5
    # Pruning later keeps more FLOPs.
    early = flops_ratio(num_text=32, num_visual=576, visual_kept=[(2, 57)], shape=GLAMM)
    late = flops_ratio(num_text=32, num_visual=576, visual_kept=[(16, 57)], shape=GLAMM)
    assert early < late


@pytest.mark.parametrize("stages", [[(3, 5), (1, 4)], [(2, 5), (2, 4)], [(4, 1)], [(-1, 1)]])
def test_bad_stages_raise(stages: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError, match="ascending"):
        prefill_flops(10, stages, TOY)


# --------------------------------------------------------------------------- the three conventions
# TOY: d=2, m=3, T=4. Prefill layer f(n) = 4n^2 + 28n; one decoded token at a layer whose
# cache holds c entries costs f_step(c) = 4d^2 + 2cd + 2dm = 16 + 4c + 12 = 28 + 4c.


def test_paper_convention_reproduces_the_printed_column() -> None:
    """Paper convention: 32 text tokens whatever the prompt; 20 / 33 / 55 % at 57 / 144 / 288."""
    assert PAPER_TEXT_TOKENS == 32
    got = [
        paper_flops_ratio(num_visual=576, visual_kept=[(2, k)], shape=GLAMM) for k in (57, 144, 288)
    ]
    assert [round(100 * r) for r in got] == [20, 33, 55]
    # On the run's real GLaMM prompt (~70 text tokens) the prompt convention gives 24 / 37 / 57.
    real = [
        flops_ratio(num_text=70, num_visual=576, visual_kept=[(2, k)], shape=GLAMM)
        for k in (57, 144, 288)
    ]
    assert [round(100 * r) for r in real] == [24, 37, 57]
    # TOY by hand: n = 32 + 8 = 40 tokens, 32 + 2 = 34 from layer 1:
    # f(40) = 6400 + 1120 = 7520, f(34) = 4624 + 952 = 5576; (7520 + 3 * 5576) / (4 * 7520).
    assert paper_flops_ratio(num_visual=8, visual_kept=[(1, 2)], shape=TOY) == pytest.approx(
        24248 / 30080
    )


def test_decode_steps_by_hand() -> None:
    # Prefill of 2 text + 8 visual tokens, 2 visual kept from layer 1: caches [10, 4, 4, 4].
    # 3 generated tokens = 2 decoding steps (the prefill yields the first token):
    #   j=1: layer 0 sees 11 -> 28 + 44 = 72; layers 1-3 see 5 -> 3 * 48 = 144; sum 216
    #   j=2: layer 0 sees 12 -> 76;           layers 1-3 see 6 -> 3 * 52 = 156; sum 232
    assert decode_flops(cache_per_layer=[10, 4, 4, 4], new_tokens=3, shape=TOY) == 216 + 232
    assert decode_flops(cache_per_layer=[10, 4, 4, 4], new_tokens=1, shape=TOY) == 0
    assert decode_flops(cache_per_layer=[10, 4, 4, 4], new_tokens=0, shape=TOY) == 0
    with pytest.raises(ValueError, match="4 entries"):
        decode_flops(cache_per_layer=[10, 4], new_tokens=3, shape=TOY)


def test_generation_convention_by_hand() -> None:
    # Pruned: prefill 680 + 3 * 176 = 1208 (test_single_stage_hand_sum) + decoding 448 = 1656.
    pruned = generation_flops(
        num_text=2, num_visual=8, visual_kept=[(1, 2)], new_tokens=3, shape=TOY
    )
    assert pruned == 1656
    # Unpruned, same 3 tokens: prefill 4 * 680 = 2720; decoding j=1: 4 * (28 + 44) = 288,
    # j=2: 4 * (28 + 48) = 304; total 3312, so this generation costs exactly half.
    full = generation_flops(num_text=2, num_visual=8, visual_kept=[], new_tokens=3, shape=TOY)
    assert full == 3312 and pruned / full == 0.5
    # One generated token is the prefill alone.
    assert (
        generation_flops(num_text=2, num_visual=8, visual_kept=[(1, 2)], new_tokens=1, shape=TOY)
        == 1208
    )


def test_generation_on_glamm_shapes_against_integer_sums() -> None:
    """Vicuna-7B shapes, 70 text tokens, 57 visual tokens from K=2, 100 new tokens, in integers."""
    d, m = 4096, 11008

    def f(n: int) -> int:
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m

    def step(c: int) -> int:
        return 4 * d * d + 2 * c * d + 2 * d * m

    caches = [646, 646] + [127] * 30
    want = sum(f(c) for c in caches) + sum(step(c + j) for j in range(1, 100) for c in caches)
    got = generation_flops(
        num_text=70, num_visual=576, visual_kept=[(2, 57)], new_tokens=100, shape=GLAMM
    )
    assert got == pytest.approx(want, rel=1e-12)
    # Decoding is mostly weights (4d^2 + 2dm per token), which pruning does not shrink:
    # the whole generation keeps more than the prefill alone.
    prefill = flops_ratio(num_text=70, num_visual=576, visual_kept=[(2, 57)], shape=GLAMM)
    full = generation_flops(
        num_text=70, num_visual=576, visual_kept=[], new_tokens=100, shape=GLAMM
    )
    assert got / full > prefill


def test_uncached_generation_by_hand() -> None:
    # Pass 0: 10 tokens, 2 + 2 from layer 1: f(10) + 3 f(4) = 680 + 528 = 1208.
    # Pass 1: 11 tokens (one generated), 2 + 1 + 3 from layer 1: f(11) + 3 f(6)
    #       = (484 + 308) + 3 * (144 + 168) = 792 + 936 = 1728.
    got = uncached_generation_flops(
        num_text=2, num_visual=8, visual_kept_per_step=[[(1, 2)], [(1, 3)]], shape=TOY
    )
    assert got == 1208 + 1728


def test_summarise_flops_writes_every_convention() -> None:
    pruned = {
        "num_text_tokens": 2,
        "num_visual": 8,
        "stage_layers": [1],
        "kept_per_stage": [2],
        "new_tokens": 3,
    }
    unpruned = {
        "num_text_tokens": 2,
        "num_visual": 8,
        "stage_layers": [],
        "kept_per_stage": [],
        "new_tokens": 1,
    }
    out = summarise_flops([pruned, unpruned], shape=TOY)
    assert set(out) == {c.key for c in FLOPS_CONVENTIONS.values()} | {"generation_tflops"}
    assert out["flops_ratio"] == pytest.approx((1208 / 2720 + 1.0) / 2)
    assert out["flops_ratio_paper"] == pytest.approx((24248 / 30080 + 1.0) / 2)
    # Totals, not a mean of ratios: (1656 + 2720) / (3312 + 2720); 2720 = the unpruned prefill alone.
    assert out["generation_flops_ratio"] == pytest.approx(4376 / 6032)
    assert out["generation_tflops"] == pytest.approx(4376 / 2 / 1e12)
    assert summarise_flops([], shape=TOY) == {}
    assert FLOPS_CONVENTIONS["prompt"].key == "flops_ratio"  # old records stay readable


def test_summarise_flops_counts_per_step_reselection_without_cache() -> None:
    """A record of FastV's per-step mode (extras.reselect_steps) pays a full pruned pass per token."""
    rec = {"num_text_tokens": 2, "num_visual": 8, "stage_layers": [1], "kept_per_stage": [2],
           "new_tokens": 2, "extras": {"reselect_steps": 2}}  # fmt: skip
    # Pass 0: f(10) + 3 f(4) = 1208. Pass 1: 11 tokens, 2 + 1 + 2 = 5 from layer 1:
    # f(11) + 3 f(5) = 792 + 3 * (100 + 140) = 1512. The reference stays the unpruned model's
    # cached generation of 2 tokens: 2720 + 4 * (28 + 4 * 11) = 3008.
    out = summarise_flops([rec], shape=TOY)
    assert out["generation_flops_ratio"] == pytest.approx((1208 + 1512) / 3008)
    assert out["flops_ratio"] == pytest.approx(1208 / 2720)  # prefill conventions unchanged


def test_input_level_pruning_by_hand() -> None:
    """K = 0 (VisionZip, DivPrune, ALTP at the input): every layer sees the kept tokens; added work counts."""
    shape = MODEL_SHAPES["glamm"]
    d, m, t = 4096, 11008, 32

    def f(n: int) -> float:  # eq. 5 written out again
        return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m

    full, kept = 32 + 576, 32 + 57
    assert paper_flops_ratio(num_visual=576, visual_kept=[(0, 57)], shape=shape) == pytest.approx(f(kept) / f(full))
    # 32 layers of 89 tokens vs 32 of 608: 14.25 % remaining, against 19.6 % at K=2 (the paper's 20 %).
    assert 100 * f(kept) / f(full) == pytest.approx(14.25, abs=0.01)
    divprune = 2 * 576 * 576 * d  # DivPrune's cosine-distance matrix over the projected tokens
    want = (t * f(kept) + divprune) / (t * f(full))
    assert paper_flops_ratio(num_visual=576, visual_kept=[(0, 57)], shape=shape, added=divprune) == pytest.approx(want)
    # summarise_flops reads the added work from a record's extras, in every convention.
    rec = {"num_visual": 576, "num_text_tokens": 32, "stage_layers": [0], "kept_per_stage": [57], "new_tokens": 1,
           "extras": {"added_flops": divprune}}  # fmt: skip
    out = summarise_flops([rec], shape=shape)
    assert out["flops_ratio"] == pytest.approx(want) and out["flops_ratio_paper"] == pytest.approx(want)
    # One generated token: the generation is the prefill, so its ratio is the prefill's.
    assert out["generation_flops_ratio"] == pytest.approx(want)
