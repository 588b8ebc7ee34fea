"""Synthetic GranD-f-format splits: exact format, determinism, content and noisy predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from altp.data.predictions import encode_mask
from altp.data.synthetic import (
    _COLOURS,
    caption_gt_path,
    gcg_target_text,
    mask_gt_path,
    scene_at,
    write_noisy_predictions,
    write_synthetic_split,
)

N_IMAGES = 10


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def split_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_split(root, split="val", n_images=N_IMAGES, seed=3)
    return root


def _load(root: Path) -> tuple[dict, dict]:
    gt_dir = root / "annotations"
    cap = json.loads(caption_gt_path(gt_dir, "val").read_text())
    masks = json.loads(mask_gt_path(gt_dir, "val").read_text())
    return cap, masks


def test_same_seed_is_bit_identical_other_seed_differs(split_root: Path, tmp_path: Path) -> None:
    write_synthetic_split(tmp_path / "again", split="val", n_images=N_IMAGES, seed=3)
    write_synthetic_split(tmp_path / "other", split="val", n_images=2, seed=4)
    first, again, other = _files(split_root), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert not set(other) & {k for k in first if k.startswith("images")}  # other ids
    assert _load(tmp_path / "other")[0]["annotations"] != _load(split_root)[0]["annotations"][:2]


def test_small_split_is_prefix_of_larger(split_root: Path, tmp_path: Path) -> None:
    write_synthetic_split(tmp_path, split="val", n_images=4, seed=3)
    small, _ = _load(tmp_path)
    big, _ = _load(split_root)
    assert small["images"] == big["images"][:4]
    assert small["annotations"] == big["annotations"][:4]


def test_val_and_test_ids_are_disjoint(split_root: Path, tmp_path: Path) -> None:
    gt_dir = write_synthetic_split(tmp_path, split="test", n_images=3, seed=3)
    test_ids = {
        img["id"] for img in json.loads(caption_gt_path(gt_dir, "test").read_text())["images"]
    }
    val_ids = {img["id"] for img in _load(split_root)[0]["images"]}
    assert not test_ids & val_ids


def test_grandf_format(split_root: Path) -> None:
    cap, masks = _load(split_root)
    gt_dir = split_root / "annotations"
    coco_masks = COCO(str(mask_gt_path(gt_dir, "val")))  # what the official evaluator loads
    coco_caps = COCO(str(caption_gt_path(gt_dir, "val")))
    assert masks["categories"] == [{"id": 1, "name": "object"}]
    assert cap["images"] == masks["images"]
    assert len(cap["annotations"]) == len(cap["images"]) == N_IMAGES
    assert len({a["id"] for a in masks["annotations"]}) == len(masks["annotations"])
    sizes = set()
    for img in cap["images"]:
        image_id = img["id"]
        assert image_id.startswith("sa_") and image_id[3:].isdigit() and len(image_id) == 11
        assert img["file_name"] == f"{image_id}.jpg"
        with Image.open(split_root / "images" / img["file_name"]) as pil:
            assert pil.format == "JPEG" and pil.size == (img["width"], img["height"])
        sizes.add((img["height"], img["width"]))
        assert 320 <= img["height"] <= 1024 and 320 <= img["width"] <= 1024
        (cap_ann,) = coco_caps.imgToAnns[image_id]
        anns = coco_masks.imgToAnns[image_id]
        assert set(cap_ann) == {"id", "image_id", "caption", "labels"}
        assert 1 <= len(cap_ann["labels"]) == len(anns) <= 8
        union = np.zeros((img["height"], img["width"]), dtype=np.int32)
        for ann in anns:
            rle = ann["segmentation"]
            assert isinstance(rle["counts"], str) and rle["size"] == [img["height"], img["width"]]
            assert ann["category_id"] == 1 and ann["iscrowd"] == 0
            assert ann["area"] == float(mask_utils.area(rle)) > 0
            union += mask_utils.decode(rle)
        assert union.max() == 1  # visible parts never overlap
        gcg_target_text(
            cap_ann["caption"], cap_ann["labels"]
        )  # every label in order in the caption
    assert len(sizes) == N_IMAGES and any(h != w for h, w in sizes)


def test_small_objects_present(split_root: Path) -> None:
    cap, masks = _load(split_root)
    area = {img["id"]: img["height"] * img["width"] for img in cap["images"]}
    fractions = [a["area"] / area[a["image_id"]] for a in masks["annotations"]]
    assert sum(f < 0.02 for f in fractions) >= 3
    assert max(fractions) > 0.05
    assert sum("small" in label for a in cap["annotations"] for label in a["labels"]) >= 3


def test_masks_cover_the_pixels_of_the_labelled_colour(split_root: Path) -> None:
    """Independent oracle: the JPEG pixels under each mask have the colour its label names."""
    cap, masks = _load(split_root)
    by_image: dict[str, list[dict]] = {}
    for ann in masks["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    names = list(_COLOURS)
    palette = np.array([_COLOURS[n] for n in names], dtype=np.float64)
    checked = 0
    for cap_ann in cap["annotations"]:
        pixels = np.asarray(Image.open(split_root / "images" / f"{cap_ann['image_id']}.jpg"))
        for label, ann in zip(cap_ann["labels"], by_image[cap_ann["image_id"]], strict=True):
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            if mask.sum() < 200:
                continue
            mean = pixels[mask].astype(np.float64).mean(axis=0)
            # Objects are painted as colour * shade (shade in [0.85, 1.1]) plus noise: fit the shade.
            shade = np.clip(palette @ mean / (palette**2).sum(axis=1), 0.8, 1.15)
            dist = np.linalg.norm(mean[None, :] - shade[:, None] * palette, axis=1)
            best = names[int(np.argmin(dist))]
            assert best in label.split(), (label, mean)
            checked += 1
    assert checked >= 10


def test_gcg_target_text_hand_cases() -> None:
    caption = "We can see a red circle on the left and a red circle on the right, on a striped background."
    assert gcg_target_text(caption, ["a red circle", "a red circle"]) == (
        "We can see <p> a red circle </p> [SEG] on the left and <p> a red circle </p> [SEG] "
        "on the right, on a striped background."
    )
    with pytest.raises(ValueError, match="does not occur"):
        gcg_target_text(caption, ["a red circle", "a red circle", "a red circle"])
    with pytest.raises(ValueError, match="does not occur"):
        gcg_target_text("a blue star and a red circle", ["a red circle", "a blue star"])


def test_misuse_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_images"):
        write_synthetic_split(tmp_path, split="val", n_images=0, seed=0)
    with pytest.raises(ValueError, match="image_size_range"):
        write_synthetic_split(
            tmp_path, split="val", n_images=1, seed=0, image_size_range=(500, 400)
        )
    with pytest.raises(ValueError, match="split"):
        write_synthetic_split(tmp_path, split="../x", n_images=1, seed=0)


def _iou(a: dict, b: dict) -> float:
    return float(mask_utils.iou([a], [b], [0])[0, 0])


def test_perfect_predictions_copy_the_gt(split_root: Path, tmp_path: Path) -> None:
    gt_dir = split_root / "annotations"
    write_noisy_predictions(gt_dir, "val", tmp_path, seed=0, quality=1.0)
    cap, masks = _load(split_root)
    for cap_ann in cap["annotations"]:
        raw = (tmp_path / f"{cap_ann['image_id']}.json").read_text()
        pred = json.loads(raw)
        assert list(pred) == ["image_id", "caption", "phrases", "pred_masks"]  # image_id first
        assert pred["caption"] == cap_ann["caption"] and pred["phrases"] == cap_ann["labels"]
        gt_rles = [
            a["segmentation"] for a in masks["annotations"] if a["image_id"] == pred["image_id"]
        ]
        assert [_iou(p, g) for p, g in zip(pred["pred_masks"], gt_rles, strict=True)] == [
            1.0
        ] * len(gt_rles)


def test_lower_quality_is_worse_and_deterministic(split_root: Path, tmp_path: Path) -> None:
    gt_dir = split_root / "annotations"
    cap, masks = _load(split_root)
    n_gt = len(masks["annotations"])
    stats = {}
    for q in (0.8, 0.2):
        write_noisy_predictions(gt_dir, "val", tmp_path / f"q{q}", seed=0, quality=q)
        preds = [
            json.loads((tmp_path / f"q{q}" / f"{a['image_id']}.json").read_text())
            for a in cap["annotations"]
        ]
        exact = sum(
            p in a["labels"]
            for pr, a in zip(preds, cap["annotations"], strict=True)
            for p in pr["phrases"]
        )
        same_caption = sum(
            p["caption"] == a["caption"] for p, a in zip(preds, cap["annotations"], strict=True)
        )
        stats[q] = (sum(len(p["pred_masks"]) for p in preds), exact, same_caption)
        for p in preds:
            h, w = next(
                (i["height"], i["width"]) for i in cap["images"] if i["id"] == p["image_id"]
            )
            assert len(p["phrases"]) == len(p["pred_masks"])
            gcg_target_text(p["caption"], p["phrases"])  # phrases stay in the caption, in order
            assert all(
                m["size"] == [h, w] and isinstance(m["counts"], str) for m in p["pred_masks"]
            )
    assert stats[0.2][1] < stats[0.8][1] <= n_gt  # fewer correct phrases at low quality
    assert stats[0.2][2] < stats[0.8][2] < len(cap["annotations"])  # captions reworded more often
    write_noisy_predictions(gt_dir, "val", tmp_path / "again", seed=0, quality=0.2)
    assert _files(tmp_path / "again") == _files(tmp_path / "q0.2")
    with pytest.raises(ValueError, match="quality"):
        write_noisy_predictions(gt_dir, "val", tmp_path / "bad", seed=0, quality=1.5)


def test_scene_at_renders_the_written_images(split_root: Path) -> None:
    """The in-memory stream (used for training) is the one the files were written from."""
    cap, masks = _load(split_root)
    for index in (0, N_IMAGES - 1):
        image_id, scene = scene_at(seed=3, split="val", index=index)
        img, ann = cap["images"][index], cap["annotations"][index]
        assert (
            image_id == img["id"]
            and scene.caption == ann["caption"]
            and scene.labels == ann["labels"]
        )
        assert scene.image.shape == (img["height"], img["width"], 3)
        gt = [a["segmentation"] for a in masks["annotations"] if a["image_id"] == image_id]
        assert [encode_mask(m) for m in scene.masks] == gt
        jpeg = np.asarray(Image.open(split_root / "images" / f"{image_id}.jpg"), dtype=np.float64)
        assert np.abs(jpeg - scene.image).mean() < 8.0  # only JPEG loss (of the grain, mostly)
