"""GranD-f GCG evaluation split in GLaMM's file layout.

A split is two COCO-style JSON files in ``gt_dir`` (groundingLMM's
``data/GranDf/annotations/val_test``) plus an image folder
(``GranDf_HA_images/val_test``):

* ``{split}_gcg_coco_caption_gt.json``: ``images`` (``id``, ``file_name``,
  ``height``, ``width``) and one annotation per image with ``image_id``,
  ``caption`` and ``labels`` (the grounded phrases).
* ``{split}_gcg_coco_mask_gt.json``: ``images``, ``categories`` and one
  annotation per grounded phrase (``image_id``, ``id``, ``category_id`` 1,
  ``segmentation`` as RLE, ``area``, ``bbox``, ``iscrowd``). The i-th mask
  annotation of an image (file order) pairs with the i-th label.

Image ids are strings (``"sa_10010541"``). The image order of a split is the
order of ``images`` in the caption file, as in the official evaluator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from altp.data.rle import rle_problem

__all__ = [
    "SPLITS",
    "GrandfFormatError",
    "ImageLoadError",
    "Sample",
    "GrandfAnnotations",
    "GrandfSplit",
    "caption_gt_path",
    "mask_gt_path",
    "to_rgb",
]

SPLITS: tuple[str, ...] = ("val", "test")
_MAX_NAMED = 5  # how many offending image ids an error message lists


class GrandfFormatError(ValueError):
    """The GT files are missing or do not follow the GranD-f GCG format."""


class ImageLoadError(OSError):
    """An image file of the split is missing or cannot be decoded."""


def caption_gt_path(gt_dir: Path, split: str) -> Path:
    return Path(gt_dir) / f"{split}_gcg_coco_caption_gt.json"


def mask_gt_path(gt_dir: Path, split: str) -> Path:
    return Path(gt_dir) / f"{split}_gcg_coco_mask_gt.json"


@dataclass(frozen=True)
class Sample:
    """One evaluation image and its grounded caption.

    ``labels[i]`` pairs with the i-th mask annotation of the image.
    """

    image_id: str
    file_name: str
    image_path: Path
    height: int
    width: int
    caption: str
    labels: tuple[str, ...]


def _name(ids: list[str]) -> str:
    shown = ", ".join(ids[:_MAX_NAMED])
    return shown + (f" (+{len(ids) - _MAX_NAMED} more)" if len(ids) > _MAX_NAMED else "")


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GrandfFormatError(
            f"missing GT file {path}; point gt_dir at GranD-f's annotations/val_test folder"
        )
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GrandfFormatError(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise GrandfFormatError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict):
        raise GrandfFormatError(f"{path}: expected a JSON object with 'images' and 'annotations' (COCO-style GT)")
    for key in ("images", "annotations"):
        if key not in data:
            raise GrandfFormatError(
                f"{path}: missing top-level key '{key}' (COCO-style GT expected)"
            )
        if not isinstance(data[key], list) or not all(isinstance(x, dict) for x in data[key]):
            raise GrandfFormatError(f"{path}: '{key}' must be a list of objects, got {str(data[key])[:60]}")
    return data


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return integral and not isinstance(value, bool) and value > 0


def _duplicates(values: list[Any]) -> list[str]:
    seen: set[Any] = set()
    return sorted({str(v) for v in values if v in seen or seen.add(v)})


def _check_images(path: Path, images: list[dict[str, Any]]) -> None:
    """Ids, sizes and file names of an ``images`` list (the caption file's, or the mask file's)."""
    for img in images:
        for key in ("id", "height", "width"):
            if key not in img:
                raise GrandfFormatError(f"{path}: an images entry lacks '{key}': {str(img)[:120]}")
        if not _is_id(img["id"]):
            raise GrandfFormatError(
                f"{path}: image id {img['id']!r} must be a string like 'sa_10010541' (or an integer)"
            )
        for key in ("height", "width"):
            if not _positive_int(img[key]):
                raise GrandfFormatError(
                    f"{path}: image {img['id']}: {key} must be a positive integer, got {img[key]!r}"
                )
        if "file_name" in img and not isinstance(img["file_name"], str):
            raise GrandfFormatError(f"{path}: image {img['id']}: file_name must be a string")
    dup = _duplicates([str(img["id"]) for img in images])
    if dup:
        raise GrandfFormatError(f"{path}: duplicate image ids {_name(dup)}; every image must be listed once")


def _check_mask_annotations(path: Path, anns: list[dict[str, Any]]) -> None:
    """Fields, unique ids and decodable RLE segmentations of the mask file's annotations."""
    for ann in anns:
        # COCOeval reads id, area and iscrowd of every GT annotation.
        lacking = [k for k in ("id", "image_id", "segmentation", "area", "iscrowd", "category_id") if k not in ann]
        if lacking:
            raise GrandfFormatError(
                f"{path}: mask annotation {ann.get('id')} (image {ann.get('image_id')}) lacks {lacking}"
            )
        where = f"{path}: mask annotation {ann['id']} (image {ann['image_id']})"
        if not _is_id(ann["id"]) or not _is_id(ann["image_id"]):
            raise GrandfFormatError(f"{where}: id and image_id must be strings or integers")
        if ann["category_id"] != 1:
            raise GrandfFormatError(f"{where}: category_id is {ann['category_id']!r}; GCG's AP50 scores category 1 only")
        if not isinstance(ann["area"], int | float) or isinstance(ann["area"], bool) or ann["iscrowd"] not in (0, 1):
            raise GrandfFormatError(f"{where}: area must be a number and iscrowd 0 or 1")
        problem = rle_problem(ann["segmentation"])
        if problem is not None:
            hint = "; GranD-f GT masks are compressed RLE (pycocotools frPyObjects converts polygons)"
            raise GrandfFormatError(f"{where}: segmentation: {problem}{hint if 'RLE dict' in problem else ''}")
    dup = _duplicates([ann["id"] for ann in anns])
    if dup:
        raise GrandfFormatError(
            f"{path}: duplicate mask annotation ids {_name(dup)}; COCOeval indexes GT by id, so duplicates "
            "silently change AP50: give every annotation its own id"
        )


class GrandfAnnotations:
    """Both GT files of a split, validated and indexed by image id.

    Validation (each failure is one :class:`GrandfFormatError` line naming the file
    and the entry): UTF-8 JSON objects with ``images`` and ``annotations`` lists;
    image ids strings or integers, unique per file; positive integer heights and
    widths; one caption annotation per image with a string ``caption`` and a list of
    string ``labels``; mask annotations with unique ids, category 1, and a compressed
    RLE segmentation (a polygon is named as such) that decodes at the image's size;
    as many masks as labels per image; at least one image.

    Attributes:
        image_ids: caption-file order.
        images: ``image_id -> images entry`` of the caption file.
        captions: ``image_id -> caption annotation`` (``caption``, ``labels``).
        masks: ``image_id -> [mask annotation, ...]`` in mask-file order.
        mask_data: the mask file's dict as loaded (what ``pycocotools.COCO``
            would load), for COCOeval.
    """

    def __init__(self, *, gt_dir: Path, split: str) -> None:
        if split not in SPLITS:
            raise GrandfFormatError(f"unknown split {split!r}; GranD-f GCG has {list(SPLITS)}")
        self.split = split
        cap_path, mask_path = caption_gt_path(gt_dir, split), mask_gt_path(gt_dir, split)
        cap, self.mask_data = _load_json(cap_path), _load_json(mask_path)
        if "categories" not in self.mask_data:
            raise GrandfFormatError(
                f"{mask_path}: missing 'categories' (COCOeval needs category 1)"
            )
        _check_images(cap_path, cap["images"])
        _check_images(mask_path, self.mask_data["images"])
        if not cap["images"]:
            raise GrandfFormatError(f"{cap_path}: the split has no images; nothing to run or score")

        self.images: dict[str, dict[str, Any]] = {str(img["id"]): img for img in cap["images"]}
        self.image_ids: list[str] = list(self.images)

        self.captions: dict[str, dict[str, Any]] = {}
        for ann in cap["annotations"]:
            for key in ("image_id", "caption", "labels"):
                if key not in ann:
                    raise GrandfFormatError(
                        f"{cap_path}: caption annotation {ann.get('id')} lacks '{key}'"
                    )
            if not isinstance(ann["caption"], str) or not isinstance(ann["labels"], list) or not all(
                isinstance(x, str) for x in ann["labels"]
            ):
                raise GrandfFormatError(
                    f"{cap_path}: caption annotation of image {ann['image_id']}: caption must be a string "
                    "and labels a list of strings"
                )
            image_id = str(ann["image_id"])
            if image_id in self.captions:
                # Official recall reads the first caption annotation but METEOR/CIDEr use
                # all of them as references; GranD-f has one, so refuse the ambiguity.
                raise GrandfFormatError(
                    f"{cap_path}: image {image_id} has several caption annotations; GranD-f has one per image"
                )
            self.captions[image_id] = ann
        no_caption = [i for i in self.image_ids if i not in self.captions]
        if no_caption:
            raise GrandfFormatError(
                f"{cap_path}: images without a caption annotation: {_name(no_caption)}"
            )

        mask_images = {str(img["id"]): img for img in self.mask_data["images"]}
        _check_mask_annotations(mask_path, self.mask_data["annotations"])
        self.masks: dict[str, list[dict[str, Any]]] = {i: [] for i in self.image_ids}
        for ann in self.mask_data["annotations"]:
            if str(ann["image_id"]) in self.masks:
                self.masks[str(ann["image_id"])].append(ann)
        self._validate(mask_path, mask_images)

    def _validate(self, mask_path: Path, mask_images: dict[str, dict[str, Any]]) -> None:
        not_in_mask = [i for i in self.image_ids if i not in mask_images]
        if not_in_mask:
            raise GrandfFormatError(
                f"{mask_path}: images of the caption file missing here: {_name(not_in_mask)}"
            )
        bad_size, bad_count = [], []
        for image_id in self.image_ids:
            img = self.images[image_id]
            hw = [int(img["height"]), int(img["width"])]
            for ann in self.masks[image_id]:
                if [int(s) for s in ann["segmentation"]["size"]] != hw:
                    bad_size.append(image_id)
                    break
            if len(self.masks[image_id]) != len(self.captions[image_id]["labels"]):
                bad_count.append(
                    f"{image_id} ({len(self.captions[image_id]['labels'])} labels, {len(self.masks[image_id])} masks)"
                )
        if bad_size:
            raise GrandfFormatError(
                f"{mask_path}: RLE size differs from the image's (height, width) for: {_name(bad_size)}"
            )
        if bad_count:
            raise GrandfFormatError(
                f"{mask_path}: labels count != masks count for: {_name(bad_count)}"
            )


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image, *, what: str = "image") -> Image.Image:
    """An image as 8-bit RGB, converting every mode whose range is defined.

    8-bit modes (L, P, RGBA, CMYK, ...) go through PIL's ``convert("RGB")``. 16-bit
    greyscale (``I;16*``, e.g. a 16-bit PNG) keeps its high byte, as OpenCV's
    ``imread`` does; ``convert("RGB")`` would clip it to white. 32-bit integer and
    float images have no defined 8-bit range and are refused.

    Raises:
        ImageLoadError: a mode without a defined 8-bit range (one line naming ``what``).
    """
    if image.mode == "RGB":
        return image.copy()
    if image.mode in _SIXTEEN_BIT:
        grey = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)  # (H, W)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), mode="RGB")
    if image.mode in ("I", "F"):
        raise ImageLoadError(
            f"{what}: mode {image.mode} (32-bit {'integer' if image.mode == 'I' else 'float'} pixels) has no "
            "defined 8-bit range; save it as 8-bit RGB"
        )
    return image.convert("RGB")


class GrandfSplit:
    """Iterate a GranD-f split's samples in the caption file's order.

    Example::

        split = GrandfSplit(gt_dir=Path("data/GranDf/annotations/val_test"), split="val",
                            image_dir=Path("data/GranDf/GranDf_HA_images/val_test"))
        for sample in split:
            image = split.load_image(sample)   # PIL RGB
    """

    def __init__(self, gt_dir: Path, split: str, image_dir: Path | None = None) -> None:
        self.gt_dir = Path(gt_dir)
        self.split = split
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.annotations = GrandfAnnotations(gt_dir=self.gt_dir, split=split)
        self._samples = [self._sample(i) for i in self.annotations.image_ids]

    def _sample(self, image_id: str) -> Sample:
        img = self.annotations.images[image_id]
        # GranD-f images are "<image_id>.jpg" (GLaMM's infer.py strips 4 chars); a file
        # without file_name fields follows that convention explicitly.
        file_name = str(img.get("file_name", f"{image_id}.jpg"))
        folder = self.image_dir if self.image_dir is not None else self.gt_dir
        ann = self.annotations.captions[image_id]
        return Sample(
            image_id=image_id,
            file_name=file_name,
            image_path=folder / file_name,
            height=int(img["height"]),
            width=int(img["width"]),
            caption=str(ann["caption"]),
            labels=tuple(str(x) for x in ann["labels"]),
        )

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples)

    def __getitem__(self, index: int) -> Sample:
        return self._samples[index]

    def check_images(self) -> None:
        """Raise :class:`ImageLoadError` naming every missing image file (no decoding)."""
        self._need_image_dir()
        missing = [s.image_id for s in self._samples if not s.image_path.is_file()]
        if missing:
            raise ImageLoadError(
                f"{len(missing)} image file(s) missing under {self.image_dir}: {_name(missing)}"
            )

    def _need_image_dir(self) -> None:
        if self.image_dir is None:
            raise ImageLoadError(
                "this GrandfSplit was built without image_dir; pass image_dir=... to load images"
            )

    def load_image(self, sample: Sample) -> Image.Image:
        """Load ``sample``'s image as RGB, checking it has the GT's size.

        Raises:
            ImageLoadError: one line naming the image and what went wrong.
        """
        self._need_image_dir()
        path = sample.image_path
        if not path.is_file():
            raise ImageLoadError(f"image {sample.image_id}: file {path} not found")
        try:
            with Image.open(path) as im:
                image = to_rgb(im, what=f"image {sample.image_id} ({path.name})")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            if isinstance(e, ImageLoadError):
                raise
            raise ImageLoadError(
                f"image {sample.image_id}: cannot decode {path} ({type(e).__name__}: {e})"
            ) from e
        if image.size != (sample.width, sample.height):
            raise ImageLoadError(
                f"image {sample.image_id}: file is {image.size[0]}x{image.size[1]} (WxH) but the GT says "
                f"{sample.width}x{sample.height}; the image folder does not match gt_dir"
            )
        return image
