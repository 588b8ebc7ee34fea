"""DDC-only and ALTP pruners: exact counts, per-region top-k oracle, density tilt, records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from altp.methods import ALTPPruner, DDCPruner, top_per_region
from altp.methods.budgets import altp_budgets, ddf_weights
from altp.methods.superpixels import RegionMap, regions_from_labels
from altp.pruners import build_pruner
from altp.pruning.base import PruneContext, ScheduleInfo, kept_count

GRID = (24, 24)  # GLaMM: 336 px / 14 px patches
V = GRID[0] * GRID[1]


def _half_textured(seed: int = 0, amp: float = 40.0) -> np.ndarray:
    """336x336 smooth colour ramp; the left half carries pixel noise of std ``amp``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:336, 0:336] / 336
    img = np.stack([200 * xx + 20, 200 * yy + 20, 100 + 50 * xx * yy], axis=-1)
    img[:, :168] += rng.normal(0, amp, size=(336, 168, 3))
    return img.clip(0, 255).astype(np.uint8)


def _halves(img: np.ndarray) -> RegionMap:
    """Hand-made regions: left half = region 0, right half = region 1."""
    labels = np.zeros(img.shape[:2], dtype=np.int64)
    labels[:, 168:] = 1
    return regions_from_labels(img, labels, GRID)


def _ctx(
    prep: tuple, scores: torch.Tensor | None, n_keep: int, ids: torch.Tensor | None = None
) -> PruneContext:
    bsz = len(prep)
    ids = torch.arange(V).expand(bsz, -1) if ids is None else ids
    return PruneContext(
        stage=0,
        layer=2,
        n_keep=n_keep,
        num_visual=V,
        grid=GRID,
        visual_ids=ids,
        scores=scores,
        prep=prep,
        seed=7,
    )


def _oracle(scores: np.ndarray, region: np.ndarray, budgets: dict[int, int]) -> list[int]:
    """Per region, the first b_k tokens by (score desc, index asc), by plain Python sorting."""
    kept: list[int] = []
    for k, b in budgets.items():
        members = [i for i in range(len(region)) if region[i] == k]
        members.sort(key=lambda i: (-scores[i], i))
        kept += members[:b]
    return sorted(kept)


@pytest.fixture(scope="module")
def preps() -> tuple[RegionMap, RegionMap]:
    img = _half_textured()
    return ALTPPruner(keep=0.1).prepare(img, GRID), ALTPPruner(keep=0.1).prepare(
        img[::-1].copy(), GRID
    )


@pytest.mark.parametrize("cls", [ALTPPruner, DDCPruner])
@pytest.mark.parametrize("keep", [0.1, 0.25, 0.5])
def test_exact_count_and_per_region_topk(cls: type, keep: float, preps: tuple) -> None:
    pruner = cls(keep=keep)
    n_keep = kept_count(keep, V)
    scores = torch.rand(2, V, generator=torch.Generator().manual_seed(1))
    sel = pruner.select(_ctx(preps, scores, n_keep))
    assert sel.indices.shape == (2, n_keep) and sel.indices.dtype == torch.long
    for b in range(2):
        row = sel.indices[b].tolist()
        assert row == sorted(set(row))  # sorted, unique
        ex = sel.extras[b]
        assert sum(ex["budgets"]) == n_keep
        assert ex["region_sizes"] == preps[b].patch_count.tolist()
        budgets = dict(enumerate(ex["budgets"]))
        assert row == _oracle(scores[b].numpy(), preps[b].patch_region, budgets)


def test_altp_tilts_budget_to_textured_half_by_hand() -> None:
    # Two equal halves, the right one flat (variance 0): w = softmax(2/3, 0), so
    # T = 57 * (0.6608, 0.3392) = (37.67, 19.33) -> (38, 19). DDC: ceil(28.8) = 29
    # each, one too many, equal excess -> region 0 trimmed -> (28, 29).
    img = _half_textured()
    img[:, 168:] = 90
    prep = _halves(img)
    scores = torch.rand(1, V, generator=torch.Generator().manual_seed(2))
    altp = ALTPPruner(keep=0.1).select(_ctx((prep,), scores, 57))
    ddc = DDCPruner(keep=0.1).select(_ctx((prep,), scores, 57))
    assert altp.extras[0]["budgets"] == [38, 19]
    assert ddc.extras[0]["budgets"] == [28, 29]
    w0 = float(np.exp(2 / 3) / (np.exp(2 / 3) + 1))
    np.testing.assert_allclose(altp.extras[0]["weights"], [w0, 1 - w0])
    left = lambda sel: int((sel.indices[0] % 24 < 12).sum())  # noqa: E731
    assert left(altp) == 38 and left(ddc) == 28


def test_altp_gives_textured_slic_regions_more_than_ddc(preps: tuple) -> None:
    # Real SLIC on the half-noisy ramp: regions have similar sizes, so the
    # noisiest region gets more tokens from ALTP than its DDC share, the
    # smoothest fewer.
    prep = preps[0]
    assert prep.num_regions >= 4
    scores = torch.rand(1, V, generator=torch.Generator().manual_seed(3))
    a = ALTPPruner(keep=0.25).select(_ctx((prep,), scores, 144)).extras[0]["budgets"]
    d = DDCPruner(keep=0.25).select(_ctx((prep,), scores, 144)).extras[0]["budgets"]
    hi, lo = int(np.argmax(prep.variance)), int(np.argmin(prep.variance))
    assert a[hi] > d[hi] and a[lo] < d[lo]


@pytest.mark.parametrize("cls", [ALTPPruner, DDCPruner])
def test_keep_all_and_tied_scores(cls: type, preps: tuple) -> None:
    prep = preps[0]
    sel = cls(keep=1.0).select(_ctx((prep,), torch.rand(1, V), V))
    assert sel.indices[0].tolist() == list(range(V))
    # All scores tie: each region keeps its lowest indices.
    sel = cls(keep=0.25).select(_ctx((prep,), torch.zeros(1, V), 144))
    budgets = dict(enumerate(sel.extras[0]["budgets"]))
    expect = sorted(
        i for k, b in budgets.items() for i in np.flatnonzero(prep.patch_region == k)[:b].tolist()
    )
    assert sel.indices[0].tolist() == expect


def test_later_stage_uses_current_tokens(preps: tuple) -> None:
    # A second stage sees a subset of the tokens; indices stay relative to it.
    ids = torch.arange(0, V, 2)[None]  # 288 tokens still present
    scores = torch.rand(1, 288, generator=torch.Generator().manual_seed(4))
    sel = ALTPPruner(keep=0.5).select(_ctx((preps[0],), scores, 50, ids=ids))
    assert sel.indices.shape == (1, 50) and int(sel.indices.max()) < 288
    region = preps[0].patch_region[ids[0].numpy()]
    assert sum(sel.extras[0]["region_sizes"]) == 288
    assert sel.indices[0].tolist() == _oracle(
        scores[0].numpy(),
        region,
        {int(k): b for k, b in zip(np.unique(region), sel.extras[0]["budgets"], strict=True)},
    )


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), frac=st.floats(0.0, 1.0))
def test_top_per_region_matches_python_oracle(seed: int, frac: float) -> None:
    rng = np.random.default_rng(seed)
    v = int(rng.integers(1, 80))
    region = rng.integers(0, int(rng.integers(1, 8)), size=v)
    _, region = np.unique(region, return_inverse=True)  # regions 0..R-1, all non-empty
    sizes = np.bincount(region)
    n_keep = int(frac * v)
    budgets = altp_budgets(weights=ddf_weights(rng.random(sizes.size)), sizes=sizes, n_keep=n_keep)
    scores = rng.integers(0, 4, size=v).astype(np.float32)  # many ties
    kept = top_per_region(
        torch.from_numpy(scores)[None],
        torch.from_numpy(region)[None],
        torch.from_numpy(budgets)[None],
        n_keep,
    )
    assert kept[0].tolist() == _oracle(scores, region, dict(enumerate(budgets.tolist())))


def test_random_importance_is_seeded_and_needs_no_scores(preps: tuple) -> None:
    pruner = ALTPPruner(keep=0.1, importance="random")
    info = ScheduleInfo(
        num_visual=V, num_text=40, num_layers=8, hidden_size=64, intermediate_size=128, grid=GRID
    )
    assert pruner.schedule(info)[0].score_layer is None
    assert ALTPPruner(keep=0.1).schedule(info)[0].score_layer == 1  # FastV's K-1
    a = pruner.select(_ctx((preps[0],), None, 57))
    b = pruner.select(_ctx((preps[0],), None, 57))
    assert torch.equal(a.indices, b.indices) and a.indices.shape == (1, 57)


def test_misuse_errors_and_records(preps: tuple) -> None:
    pruner = build_pruner("altp", keep=0.1)
    assert isinstance(pruner, ALTPPruner) and isinstance(build_pruner("ddc", keep=0.1), DDCPruner)
    with pytest.raises(ValueError, match="prepare"):
        pruner.select(_ctx((None,), torch.rand(1, V), 57))
    with pytest.raises(ValueError, match="score_layer"):
        pruner.select(_ctx((preps[0],), None, 57))
    with pytest.raises(ValueError, match="variance"):
        ALTPPruner(keep=0.1, variance_mode="gray").select(_ctx((preps[0],), torch.rand(1, V), 57))
    with pytest.raises(ValueError, match="grid"):
        bad = regions_from_labels(np.zeros((336, 336, 3), np.uint8), np.zeros((336, 336)), (12, 12))
        pruner.select(_ctx((bad,), torch.rand(1, V), 57))
    with pytest.raises(ValueError, match="importance"):
        ALTPPruner(keep=0.1, importance="saliency")
    with pytest.raises(ValueError, match="alpha"):
        ALTPPruner(keep=0.1, alpha=0)
    assert pruner.hparams() == {
        "keep": 0.1, "layer": 2, "n_segments": 10, "compactness": 5.0, "sigma": 1.0,
        "importance": "attention", "enforce_connectivity": True, "alpha": 1.5, "variance_mode": "channel_mean",
    }  # fmt: skip
    assert set(DDCPruner(keep=0.1).hparams()) == {
        "keep",
        "layer",
        "n_segments",
        "compactness",
        "sigma",
        "importance",
        "enforce_connectivity",
    }


# ---------------------------------------------------------------- through the engine

ENGINE_GRID = (6, 6)  # 84-px images, 14-px patches
ENGINE_V, PREFIX, SUFFIX = 36, 5, 4


def _tiny_llama(attn: str, state: dict | None = None) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg).eval()
    if state is not None:
        lm.load_state_dict(state)
    return lm


@pytest.fixture(scope="module")
def engine_setup() -> tuple[torch.nn.Module, list[np.ndarray], torch.Tensor, torch.Tensor]:
    """SDPA model, two images, prompt embeddings, and the eager oracle's FastV scores."""
    lm = _tiny_llama("sdpa")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:84, 0:84] / 84
    images = []
    for amp in (40.0, 10.0):
        img = np.stack([200 * xx + 20, 200 * yy + 20, 100 + 50 * xx * yy], axis=-1)
        img[:, :42] += rng.normal(0, amp, size=(84, 42, 3))
        images.append(img.clip(0, 255).astype(np.uint8))
    embeds = torch.randn(
        2, PREFIX + ENGINE_V + SUFFIX, 32, generator=torch.Generator().manual_seed(1)
    )
    # Independent oracle: eager attention weights of layer K-1 = 1, last row,
    # mean over heads, visual columns.
    eager = _tiny_llama("eager", lm.state_dict())
    with torch.inference_mode():
        attn = eager(inputs_embeds=embeds, output_attentions=True).attentions[1]  # (B, H, N, N)
    scores = attn[:, :, -1, PREFIX : PREFIX + ENGINE_V].mean(1)  # (B, V)
    return lm, images, embeds, scores


@pytest.mark.parametrize("cls", [ALTPPruner, DDCPruner])
@pytest.mark.parametrize("keep", [0.25, 0.5])
def test_engine_keeps_budgeted_top_attention_tokens(
    cls: type, keep: float, engine_setup: tuple
) -> None:
    from altp.pruning.engine import PruningEngine

    lm, images, embeds, scores = engine_setup
    pruner = cls(keep=keep, n_segments=4)
    prep = [pruner.prepare(img, ENGINE_GRID) for img in images]
    _, record = PruningEngine(lm=lm, pruner=pruner).prefill(
        inputs_embeds=embeds, visual_start=PREFIX, num_visual=ENGINE_V, grid=ENGINE_GRID, prep=prep
    )
    n_keep = kept_count(keep, ENGINE_V)
    assert record.kept_per_stage == [n_keep] and record.stage_layers == [2]
    for b in range(2):
        kept = record.kept_tokens[b]
        assert len(kept) == n_keep and kept == sorted(set(kept))
        budgets = record.extras[b]["budgets"]
        assert sum(budgets) == n_keep and len(budgets) == prep[b].num_regions
        assert kept == _oracle(scores[b].numpy(), prep[b].patch_region, dict(enumerate(budgets)))


def _region_extras(img: np.ndarray, grid: tuple[int, int], n_segments: int, enforce: bool) -> dict:
    """The record extras DDC writes for one image: SLIC's realised count and the regions with a token."""
    pruner = DDCPruner(keep=0.25, n_segments=n_segments, enforce_connectivity=enforce)
    v = grid[0] * grid[1]
    ctx = PruneContext(stage=0, layer=2, n_keep=kept_count(0.25, v), num_visual=v, grid=grid,
                       visual_ids=torch.arange(v)[None], scores=torch.rand(1, v), prep=(pruner.prepare(img, grid),),
                       seed=7)  # fmt: skip
    return pruner.select(ctx).extras[0]


@pytest.mark.parametrize("enforce", [True, False])
def test_realised_regions_on_hand_made_images(enforce: bool) -> None:
    uniform = np.full((336, 336, 3), 128, dtype=np.uint8)
    got = _region_extras(uniform, GRID, 1, enforce)
    assert (got["slic_segments"], got["regions"]) == (1, 1)
    # Two colours side by side, SLIC asked for two: two superpixels, each owning its half of the grid.
    split = np.zeros((336, 672, 3), dtype=np.uint8)
    split[:, :336] = (255, 0, 0)
    split[:, 336:] = (0, 0, 255)
    got = _region_extras(split, (24, 48), 2, enforce)
    assert (got["slic_segments"], got["regions"], got["region_sizes"]) == (2, 2, [576, 576])


def test_connectivity_switch_changes_the_realised_count() -> None:
    # SLIC's N is a target: on a noisy half-textured image, enforcing connectivity merges segments.
    img = _half_textured()
    merged = _region_extras(img, GRID, 10, True)
    free = _region_extras(img, GRID, 10, False)
    assert free["slic_segments"] == 9 and merged["slic_segments"] <= free["slic_segments"]
    assert DDCPruner(keep=0.1, enforce_connectivity=False).hparams()["enforce_connectivity"] is False
