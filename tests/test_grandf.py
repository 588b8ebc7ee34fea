"""GranD-f data layer: file layout, caption-file order, validation errors, image loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altp.data.grandf import GrandfFormatError, GrandfSplit, ImageLoadError, Sample
from tests.conftest import box, write_gcg_split


def _images() -> list[dict]:
    # Caption-file order deliberately not sorted by id.
    return [
        {
            "id": "sa_9",
            "height": 6,
            "width": 8,
            "caption": "A red box.",
            "labels": ["A red box"],
            "masks": [box(6, 8, 1, 3, 1, 4)],
        },
        {
            "id": "sa_1",
            "height": 5,
            "width": 4,
            "caption": "Two blue dots.",
            "labels": ["blue dot", "blue dot"],
            "masks": [box(5, 4, 0, 1, 0, 1), box(5, 4, 3, 5, 2, 4)],
        },
    ]


def test_iterates_in_caption_file_order(tmp_path: Path) -> None:
    gt = write_gcg_split(tmp_path / "gt", "val", _images())
    split = GrandfSplit(gt, "val", tmp_path / "img")
    assert len(split) == 2
    samples = list(split)
    assert [s.image_id for s in samples] == ["sa_9", "sa_1"]
    assert samples[1] == Sample(
        image_id="sa_1",
        file_name="sa_1.jpg",
        image_path=tmp_path / "img" / "sa_1.jpg",
        height=5,
        width=4,
        caption="Two blue dots.",
        labels=("blue dot", "blue dot"),
    )
    with pytest.raises(AttributeError):
        samples[0].caption = "x"  # type: ignore[misc]


def test_missing_file_and_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(GrandfFormatError, match="missing GT file .*val_gcg_coco_caption_gt.json"):
        GrandfSplit(tmp_path, "val", None)
    with pytest.raises(GrandfFormatError, match="unknown split 'train'"):
        GrandfSplit(tmp_path, "train", None)


def _rewrite(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_key_is_named(tmp_path: Path) -> None:
    gt = write_gcg_split(tmp_path, "val", _images())
    _rewrite(gt / "val_gcg_coco_caption_gt.json", lambda d: d["annotations"][1].pop("labels"))
    with pytest.raises(GrandfFormatError, match="lacks 'labels'"):
        GrandfSplit(gt, "val", None)


def test_rle_size_mismatch_names_the_image(tmp_path: Path) -> None:
    gt = write_gcg_split(tmp_path, "val", _images())

    def edit(d: dict) -> None:
        d["images"][1]["height"] = 7  # sa_1's masks are 5x4

    _rewrite(gt / "val_gcg_coco_caption_gt.json", edit)
    with pytest.raises(GrandfFormatError, match="RLE size differs .*: sa_1$"):
        GrandfSplit(gt, "val", None)


def test_label_mask_count_mismatch_names_the_image(tmp_path: Path) -> None:
    gt = write_gcg_split(tmp_path, "val", _images())
    _rewrite(
        gt / "val_gcg_coco_caption_gt.json", lambda d: d["annotations"][0]["labels"].append("extra")
    )
    with pytest.raises(
        GrandfFormatError, match=r"labels count != masks count for: sa_9 \(2 labels, 1 masks\)"
    ):
        GrandfSplit(gt, "val", None)


def test_load_image_rgb_and_errors(tmp_path: Path) -> None:
    gt = write_gcg_split(tmp_path / "gt", "val", _images())
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    Image.fromarray(np.full((6, 8), 120, dtype=np.uint8), mode="L").save(img_dir / "sa_9.jpg")
    split = GrandfSplit(gt, "val", img_dir)
    image = split.load_image(split[0])
    assert image.mode == "RGB" and image.size == (8, 6)
    with pytest.raises(ImageLoadError, match="image sa_1: file .*sa_1.jpg not found"):
        split.load_image(split[1])
    with pytest.raises(ImageLoadError, match="1 image file\\(s\\) missing .*sa_1"):
        split.check_images()
    (img_dir / "sa_1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match="image sa_1: cannot decode"):
        split.load_image(split[1])
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(img_dir / "sa_1.jpg")
    with pytest.raises(ImageLoadError, match="5x4 \\(WxH\\) but the GT says 4x5"):
        split.load_image(split[1])


def test_no_image_dir_is_an_error_on_load(tmp_path: Path) -> None:
    split = GrandfSplit(write_gcg_split(tmp_path, "val", _images()), "val", None)
    with pytest.raises(ImageLoadError, match="without image_dir"):
        split.load_image(split[0])


def test_two_captions_for_one_image_are_refused(tmp_path: Path) -> None:
    gt = write_gcg_split(tmp_path, "val", _images())

    def edit(d: dict) -> None:
        d["annotations"].append(dict(d["annotations"][0], id=99))

    _rewrite(gt / "val_gcg_coco_caption_gt.json", edit)
    with pytest.raises(GrandfFormatError, match="image sa_9 has several caption annotations"):
        GrandfSplit(gt, "val", None)


@pytest.mark.parametrize("mode", ["L", "P", "LA", "RGBA", "CMYK", "1"])
def test_eight_bit_modes_convert_as_pil_does(mode) -> None:
    from altp.data.grandf import to_rgb

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(image.convert("RGB")))


def test_wide_integer_and_float_images_are_refused_naming_the_mode() -> None:
    from altp.data.grandf import ImageLoadError, to_rgb

    for mode, arr in (("I", np.full((4, 4), 70000, np.int32)), ("F", np.zeros((4, 4), np.float32))):
        image = Image.fromarray(arr)
        assert image.mode == mode
        with pytest.raises(ImageLoadError, match=f"mode {mode} .*save it as 8-bit RGB"):
            to_rgb(image, what="image x")
