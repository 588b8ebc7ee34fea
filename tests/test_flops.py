"""Eq.-5 FLOPs: the paper's reported ratios, hand-summed multi-stage cases, model shapes."""

from __future__ import annotations

import pytest

from eval.flops import MODEL_SHAPES, LLMShape, flops_ratio, layer_flops, prefill_flops

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
