"""Object coverage: patch geometry of both adapters, the per-object mean, records and metrics.

Oracles are worked out by hand in the comments (patch boundaries of a known
resize/crop/padding), or come from the vision tower's own pixels
(``clip_resize_crop`` / ``vision_image`` of a white-on-black mask image).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from altp.coverage import (
    image_object_coverage,
    object_patches,
    stage_coverage,
    summarise_coverage,
)
from altp.models.glamm import GLaMM, clip_resize_crop
from altp.models.omg_llava import OmgLlava
from altp.models.patch_grid import rect_area_fractions
from altp.run.runner import run
from tests.conftest import box, write_gcg_split

ROOT = Path(__file__).resolve().parents[1]
GLAMM = SimpleNamespace(clip_size=336, grid=(24, 24))  # what GLaMM.token_grid_fraction reads
OMG = SimpleNamespace(grid=(16, 16))


def glamm_fraction(mask: np.ndarray) -> np.ndarray:
    return GLaMM.token_grid_fraction(GLAMM, mask)


def omg_fraction(mask: np.ndarray) -> np.ndarray:
    return OmgLlava.token_grid_fraction(OMG, mask)


# A 756 x 504 (W x H) image: CLIP resizes the short side 504 -> 336 (scale 2/3, long side
# int(336 * 756 / 504) = 504) and crops columns [84, 420) of the resized image, i.e. original
# columns [126, 630). One 14 px patch is 21 original px: token (r, c) sees original rows
# [21 r, 21 r + 21) and columns [126 + 21 c, 126 + 21 c + 21).
W, H = 756, 504


def patch_box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Mask of GLaMM tokens rows r0:r1, cols c0:c1 on the W x H image (hand geometry above)."""
    return box(H, W, 21 * r0, 21 * r1, 126 + 21 * c0, 126 + 21 * c1)


def test_rect_fractions_of_a_hand_drawn_mask():
    m = np.zeros((4, 6), dtype=bool)
    m[1:3, 2:5] = True  # rows 1-2, columns 2-4
    got = rect_area_fractions(m, np.array([0.0, 2.0, 4.0]), np.array([0.0, 3.0, 6.0]))
    # [0,2)x[0,3): pixel (1,2) = 1 of 6; [0,2)x[3,6): (1,3),(1,4) = 2 of 6; bottom row alike.
    np.testing.assert_allclose(got, [[1 / 6, 2 / 6], [1 / 6, 2 / 6]])
    # Fractional edges: [0.5, 1.5) x [2.5, 3.5) holds half a row of pixels (1,2),(1,3): area 0.5.
    got = rect_area_fractions(m, np.array([0.5, 1.5]), np.array([2.5, 3.5]))
    np.testing.assert_allclose(got, [[0.5]])
    # A rectangle half outside the image (padding) is at most half covered.
    full = np.ones((4, 4), dtype=bool)
    np.testing.assert_allclose(
        rect_area_fractions(full, np.array([-4.0, 4.0]), np.array([0.0, 4.0])), [[0.5]]
    )


def test_glamm_maps_one_known_patch_through_resize_and_centre_crop():
    frac = glamm_fraction(patch_box(5, 6, 7, 8))
    assert frac.shape == (24, 24)
    want = np.zeros((24, 24))
    want[5, 7] = 1.0
    np.testing.assert_allclose(frac, want, atol=1e-12)
    # The same on a portrait image: width 504 -> 336, height 756 -> 504, rows [126, 630) kept.
    portrait = box(W, H, 126 + 21 * 3, 126 + 21 * 4, 21 * 9, 21 * 10)
    want = np.zeros((24, 24))
    want[3, 9] = 1.0
    np.testing.assert_allclose(glamm_fraction(portrait), want, atol=1e-12)


def test_glamm_geometry_matches_the_pixels_clip_sees():
    # Independent of the hand geometry: draw masks, push the image through the real
    # preprocessing, and read each 14 px patch's share of bright pixels.
    rng = np.random.default_rng(0)
    for w, h in [(756, 504), (500, 900), (640, 333)]:
        m = np.zeros((h, w), dtype=bool)
        for _ in range(3):
            y0, x0 = int(rng.integers(0, h - 60)), int(rng.integers(0, w - 60))
            m[y0 : y0 + int(rng.integers(20, 200)), x0 : x0 + int(rng.integers(20, 200))] = True
        seen = clip_resize_crop(Image.fromarray(m.astype(np.uint8) * 255), 336)[..., 0] > 127
        from_pixels = seen.reshape(24, 14, 24, 14).mean(axis=(1, 3))
        np.testing.assert_allclose(glamm_fraction(m), from_pixels, atol=0.08)


def test_omg_padding_geometry():
    # 800 x 425 (W x H): padded to 800 x 800 with the image at rows [187, 612); one token is
    # 800 / 16 = 50 px of the square, so token row r sees original rows [50 r - 187, 50 r - 137).
    w, h = 800, 425
    m = box(h, w, 263, 313, 100, 150)  # rows [450, 500) of the square = token row 9, column 2
    want = np.zeros((16, 16))
    want[9, 2] = 1.0
    np.testing.assert_allclose(omg_fraction(m), want, atol=1e-12)
    # The whole image: token row 3 spans original rows [-37, 13), 13 of 50 in the image; rows
    # 0-2 and 13-15 are padding only; row 12 spans [413, 463): 12 of 50.
    frac = omg_fraction(np.ones((h, w), dtype=bool))
    np.testing.assert_allclose(
        frac[:, 0], [0, 0, 0, 13 / 50] + [1] * 8 + [12 / 50, 0, 0, 0], atol=1e-12
    )
    assert np.all(frac == frac[:, :1])  # every column alike: no horizontal padding
    # That strip of 13 rows is no half patch: its object gets its best patch (the first of ties).
    assert object_patches(omg_fraction(box(h, w, 0, 13, 0, 50))).tolist() == [3 * 16 + 0]


def test_omg_geometry_matches_the_pixels_omg_seg_sees():
    m = np.zeros((425, 800), dtype=bool)
    m[30:260, 90:400] = True
    img = Image.fromarray(m.astype(np.uint8) * 255).convert("RGB")
    seen = OmgLlava.vision_image(OMG, img).min(axis=2) > 190  # the grey padding stays below
    from_pixels = seen.reshape(16, 64, 16, 64).mean(axis=(1, 3))
    np.testing.assert_allclose(omg_fraction(m), from_pixels, atol=0.04)


def test_object_patches_threshold_fallback_and_out_of_view():
    f = np.zeros((2, 3))
    f[0, 1], f[1, 2], f[1, 0] = 0.5, 0.49, 0.7
    assert object_patches(f).tolist() == [1, 3]  # exactly half counts; 0.49 does not
    tiny = np.zeros((2, 3))
    tiny[1, 1] = tiny[0, 2] = 0.2
    assert object_patches(tiny).tolist() == [2]  # best patch, the first in row-major order on ties
    assert object_patches(np.zeros((2, 3))) is None


def test_objects_weigh_equally_whatever_their_size():
    big = np.arange(10)  # 10 patches, 5 kept -> 0.5
    small = np.array([20])  # 1 patch, kept -> 1.0
    kept = [[0, 2, 4, 6, 8, 20, 30]]
    assert stage_coverage([big, small], kept) == [0.75]  # not 6/11 (patch-weighted)
    assert stage_coverage([], [[0], [0]]) == [None, None]


def test_image_coverage_counts_cropped_away_objects_and_tiny_ones():
    a = patch_box(5, 7, 7, 9)  # tokens (5,7) (5,8) (6,7) (6,8) = 127 128 151 152
    tiny = box(
        H, W, 21 * 10 + 5, 21 * 10 + 12, 126 + 21 * 12 + 3, 126 + 21 * 12 + 10
    )  # 49/441 of token 252
    cropped = box(H, W, 0, 50, 0, 100)  # columns < 126: cut off by the centre crop
    model = SimpleNamespace(token_grid_fraction=glamm_fraction)
    kept = [[127, 128, 151, 252, 300], [127, 300], [300]]
    got = image_object_coverage(model, [a, tiny, cropped], kept)
    assert got["gt_objects"] == 2 and got["gt_objects_out_of_view"] == 1
    assert got["object_coverage"] == pytest.approx([(3 / 4 + 1) / 2, (1 / 4 + 0) / 2, 0.0])
    assert image_object_coverage(model, [], kept)["object_coverage"] == [None, None, None]
    assert image_object_coverage(model, [cropped], [])["object_coverage"] == []


def test_summary_averages_images_with_objects_and_unpruned_is_one():
    recs = [
        {"object_coverage": [0.5, 0.25], "gt_objects": 2},
        {"object_coverage": [1.0, 0.75], "gt_objects": 1},
        {"object_coverage": [None, None], "gt_objects": 0},  # no object: left out
        {"kept_tokens": [1]},  # written before coverage existed: left out
    ]
    s = summarise_coverage(recs)
    assert (s["object_coverage"], s["object_coverage_final"]) == (0.75, 0.5)
    assert s["object_coverage_per_stage"] == [0.75, 0.5] and s["object_coverage_n_images"] == 2
    unpruned = summarise_coverage([{"object_coverage": [], "gt_objects": 3}])
    assert unpruned["object_coverage"] == unpruned["object_coverage_final"] == 1.0
    assert unpruned["object_coverage_per_stage"] == []
    mixed = summarise_coverage(
        [
            {"object_coverage": [0.5], "gt_objects": 1},
            {"object_coverage": [1.0, 0.5], "gt_objects": 1},
        ]
    )
    assert mixed["object_coverage_per_stage"] is None and mixed["object_coverage_final"] == 0.5
    assert summarise_coverage([])["object_coverage"] is None


# -- through the runner -------------------------------------------------------------------------

OBJECTS = {127, 128, 151, 152}, {252}  # hand-derived patches of the two in-view objects


@pytest.fixture(scope="module")
def hand_split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hand")
    masks = [patch_box(5, 7, 7, 9),
             box(H, W, 21 * 10 + 5, 21 * 10 + 12, 126 + 21 * 12 + 3, 126 + 21 * 12 + 10),
             box(H, W, 0, 50, 0, 100)]  # fmt: skip
    write_gcg_split(
        root / "gt",
        "val",
        [
            {
                "id": "img1",
                "height": H,
                "width": W,
                "caption": "a b c",
                "labels": ["a", "b", "c"],
                "masks": masks,
            }
        ],
    )
    (root / "images").mkdir()
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(root / "images" / "img1.jpg")
    return root


def _run(root: Path, out: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=glamm_tiny", "model.max_new_tokens=4", "data=synthetic", "data.generate=null",
            f"data.gt_dir={root / 'gt'}", f"data.image_dir={root / 'images'}", "evaluate=false",
            f"out_dir={out}", *overrides,
        ])  # fmt: skip
    return run(cfg, choices={"model": "glamm_tiny", "data": "synthetic", "pruner": cfg.pruner.name})


@pytest.mark.parametrize("pruner", ["pdrop", "uniform", "none"])
def test_records_and_metrics_carry_hand_checked_coverage(
    pruner: str, hand_split: Path, tmp_path: Path
):
    metrics = _run(hand_split, tmp_path / "run", f"pruner={pruner}", "keep=0.25")
    rec = json.loads((tmp_path / "run" / "records" / "img1.json").read_text())
    stages = rec["kept_tokens_per_stage"]
    assert rec["gt_objects"] == 2 and rec["gt_objects_out_of_view"] == 1
    if pruner == "none":
        assert stages == [] and rec["object_coverage"] == [] and metrics["object_coverage"] == 1.0
        return
    assert [len(s) for s in stages] == rec["kept_per_stage"] and stages[0] == rec["kept_tokens"]
    assert all(
        set(b) <= set(a) for a, b in zip(stages, stages[1:], strict=False)
    )  # only ever fewer
    if pruner == "pdrop":
        assert len(stages) == 4  # [2, 8, 16, 24] on the tiny model's 32 layers
    want = [sum(len(p & set(k)) / len(p) for p in OBJECTS) / 2 for k in stages]
    assert rec["object_coverage"] == pytest.approx(want)
    assert metrics["object_coverage"] == pytest.approx(want[0])
    assert metrics["object_coverage_final"] == pytest.approx(want[-1])
    assert metrics["object_coverage_per_stage"] == pytest.approx(want)


def test_tables_show_first_stage_coverage_only_when_recorded():
    from eval.run_records import RunRecord
    from eval.tables import build_tables

    def rec(pruner: str, keep: float, split: str, **extra) -> RunRecord:
        m = {"model": "m", "data": f"d_{split}", "split": split, "pruner": pruner, "keep": keep,
             "flops_ratio": 0.5, "mean_kept_tokens": 57, **extra}  # fmt: skip
        return RunRecord(path=Path(f"{pruner}{keep}{split}"), metrics=m, finished=0.0)

    old = build_tables([rec("fastv", 0.1, "val")])[0]
    assert "ObjCov" not in old.columns
    runs = [rec("fastv", 0.1, "val", object_coverage=0.4321, object_coverage_final=0.1),
            rec("fastv", 0.1, "test", object_coverage=0.9), rec("pdrop", 0.1, "val")]  # fmt: skip
    table = build_tables(runs)[0]
    assert table.columns[-2:] == ["FLOPs (paper)", "ObjCov"] and sum(s for _, s in table.groups) == len(
        table.columns
    )
    by_name = {row[0]: row for row in table.rows}
    assert by_name["fastv"][-1] == "43.2"  # the val run's first stage, like FLOPs
    assert by_name["pdrop"][-1] == "—"
    assert any("ObjCov" in n for n in table.notes)
