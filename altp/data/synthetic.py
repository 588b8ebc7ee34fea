"""Synthetic GCG splits in GranD-f's exact on-disk format.

A split written by :func:`write_synthetic_split` is laid out like GranD-f::

    out_dir/
      annotations/{split}_gcg_coco_caption_gt.json   # images + one caption/labels per image
      annotations/{split}_gcg_coco_mask_gt.json      # images + masks (category 1, RLE)
      images/{image_id}.jpg

Conventions (those of groundingLMM ``eval/gcg/evaluate.py`` and its loaders):

* image ids are strings ``sa_<8 digits>``; the image file is ``{image_id}.jpg``;
* each image has exactly one caption annotation with ``caption`` and ``labels``;
* the i-th label of an image pairs with its i-th mask annotation (file order);
* masks are compressed COCO RLE with ``counts`` as a str, ``size = [H, W]``;
  a mask is the *visible* part of its object (later objects occlude earlier ones).

Every label occurs verbatim, in order, in its caption, so the caption can be
turned into GLaMM's training target with :func:`gcg_target_text`.
:func:`write_noisy_predictions` (from :mod:`altp.data.noisy_predictions`) writes
degraded GLaMM-format predictions for a split.

Everything is a function of ``(seed, split, image index)``: the same call writes
bit-identical files, and a split of n images is the prefix of a larger one.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from skimage import draw

from altp.data.grandf import caption_gt_path, mask_gt_path
from altp.data.noisy_predictions import write_noisy_predictions
from altp.predictions import encode_mask

__all__ = [
    "JPEG_QUALITY",
    "Scene",
    "caption_gt_path",
    "gcg_target_text",
    "mask_gt_path",
    "render_scene",
    "scene_at",
    "write_noisy_predictions",
    "write_synthetic_split",
]

JPEG_QUALITY = 90  # fixed so that the same seed gives the same bytes
_ID_RANGES = {"val": 10_000_000, "test": 40_000_000}  # disjoint ids when splits share images/
_OTHER_SPLITS_BASE = 70_000_000


def _split_key(split: str) -> int:
    # Python's hash() is salted per process; crc32 is stable across runs.
    return zlib.crc32(split.encode("utf-8"))


def gcg_target_text(caption: str, labels: list[str]) -> str:
    """GLaMM's GCG training target: each label wrapped as ``<p> label </p> [SEG]``.

    Labels are located left to right, each after the previous one, so repeated
    labels ("a red circle ... a red circle") map to successive occurrences.

    Example:
        >>> gcg_target_text("The image shows a red star on the left.", ["a red star"])
        'The image shows <p> a red star </p> [SEG] on the left.'

    Raises:
        ValueError: a label does not occur (in order) in the caption.
    """
    out: list[str] = []
    pos = 0
    for label in labels:
        hit = caption.find(label, pos)
        if hit < 0:
            raise ValueError(
                f"label {label!r} does not occur after position {pos} of caption {caption!r}; "
                "labels must appear verbatim in the caption, in mask order"
            )
        out.append(caption[pos:hit])
        out.append(f"<p> {label} </p> [SEG]")
        pos = hit + len(label)
    out.append(caption[pos:])
    return "".join(out)


# --------------------------------------------------------------------------- scenes

# Palette order (rainbow, then white and black) is the order objects are mentioned in.
_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (240, 220, 30), "green": (30, 170, 50),
    "cyan": (30, 210, 220), "blue": (30, 70, 220), "purple": (140, 40, 180), "pink": (250, 120, 190),
    "white": (245, 245, 245), "black": (20, 20, 20),
}  # fmt: skip
_SHAPES = ("circle", "square", "triangle", "star", "diamond")
_BACKGROUNDS = ("gradient", "striped", "checkered", "mottled")
# Object area as a fraction of the image: "small" ones are the ones pruning loses.
_AREA_FRACTIONS = {"small": (0.003, 0.015), "medium": (0.02, 0.06), "large": (0.08, 0.18)}
_INTROS = ("The image shows", "This picture contains", "We can see", "In this scene there is")


@dataclass(frozen=True)
class Scene:
    """One rendered image with its ground truth.

    Attributes:
        image: (H, W, 3) uint8 RGB, before JPEG compression.
        masks: per object, (H, W) bool, its visible part; masks never overlap.
        labels: one phrase per mask, same order ("a small red circle").
        caption: mentions every label verbatim, in mask order.
    """

    image: np.ndarray  # (H, W, 3) uint8
    masks: list[np.ndarray]  # per object, (H, W) bool, visible part, caption order
    labels: list[str]
    caption: str


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    kind = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    # Muted colours keep the saturated objects visible on every background.
    c0, c1 = rng.uniform(60, 200, size=(2, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1.0) / 2.0
    if kind == "striped":
        t = 0.5 + 0.5 * np.sin(t * 2 * np.pi * rng.uniform(4, 12))
    elif kind == "checkered":
        cell = int(rng.integers(16, 64))
        t = ((yy // cell + xx // cell) % 2) * 0.8 + 0.1
    elif kind == "mottled":
        t = ndimage.gaussian_filter(rng.random((h, w)).astype(np.float32), sigma=rng.uniform(6, 20))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    img += rng.normal(0.0, 4.0, size=img.shape)  # sensor-like grain so regions have texture
    return img, kind


def _shape_mask(
    shape: str, cy: float, cx: float, r: float, rot: float, hw: tuple[int, int]
) -> np.ndarray:
    """Full (unoccluded) (H, W) bool mask of a shape of radius ~r centred at (cy, cx), rotated by rot."""
    out = np.zeros(hw, dtype=bool)
    if shape in ("circle", "ellipse"):
        ry, rx = (r, r) if shape == "circle" else (0.6 * r, 1.25 * r)
        out[draw.ellipse(cy, cx, ry, rx, shape=hw, rotation=rot)] = True
        return out
    if shape == "star":
        k = np.arange(10)
        radii, angles = np.where(k % 2 == 0, 1.2 * r, 0.5 * r), -np.pi / 2 + k * np.pi / 5
        ly, lx = radii * np.sin(angles), radii * np.cos(angles)
    elif shape == "triangle":
        angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        ly, lx = 1.25 * r * np.sin(angles), 1.25 * r * np.cos(angles)
    else:  # quadrilaterals as (half-height, half-width) in the object's own frame
        hy, hx = {"square": (0.9, 0.9), "rectangle": (0.6, 1.4), "diamond": (1.3, 0.8)}[shape]
        if shape == "diamond":
            ly, lx = r * np.array([-hy, 0, hy, 0]), r * np.array([0, hx, 0, -hx])
        else:
            ly, lx = r * np.array([-hy, -hy, hy, hy]), r * np.array([-hx, hx, hx, -hx])
    cos, sin = np.cos(rot), np.sin(rot)
    out[draw.polygon(cy + cos * ly + sin * lx, cx - sin * ly + cos * lx, shape=hw)] = True
    return out


def _position_words(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    row = min(int(3 * ys.mean() / h), 2)
    col = min(int(3 * xs.mean() / w), 2)
    return [
        ["in the top left corner", "at the top", "in the top right corner"],
        ["on the left", "in the center", "on the right"],
        ["in the bottom left corner", "at the bottom", "in the bottom right corner"],
    ][row][col]


def _label(size: str, colour: str, shape: str) -> str:
    words = ([size] if size != "medium" else []) + [colour, shape]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def render_scene(
    rng: np.random.Generator, *, size_range: tuple[int, int], objects_range: tuple[int, int]
) -> Scene:
    """Draw one scene from ``rng`` (size per side and object count from the inclusive ranges)."""
    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    img, bg_kind = _background(rng, h, w)
    n_obj = int(rng.integers(objects_range[0], objects_range[1] + 1))
    visible: list[np.ndarray] = []  # visible part of each placed object, draw order
    areas: list[int] = []  # full area of each placed object
    meta: list[
        tuple[str, str, str, tuple[float, float, float]]
    ] = []  # size, colour, shape, (cy, cx, r)
    # Every object of an image has its own colour, so a phrase names one object.
    palette = [list(_COLOURS)[int(c)] for c in rng.permutation(len(_COLOURS))]
    if n_obj > len(palette):
        raise ValueError(f"at most {len(palette)} objects per image (one per colour), got {n_obj}")
    for i in range(n_obj):
        # The first object is small more often than not: every split has many small ones.
        if i == 0 and rng.random() < 0.6:
            size = "small"
        else:
            size = ("small", "medium", "large")[int(rng.choice(3, p=[0.3, 0.45, 0.25]))]
        colour = palette[i]
        shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
        r = float(np.sqrt(rng.uniform(*_AREA_FRACTIONS[size]) * h * w / np.pi))
        for _ in range(20):  # placement retries until every object stays mostly visible
            if meta and rng.random() < 0.35:  # touch or overlap an earlier object
                py, px, pr = meta[int(rng.integers(len(meta)))][3]
                ang, gap = rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.05) * (pr + r)
                cy, cx = py + gap * np.sin(ang), px + gap * np.cos(ang)
            else:
                cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
            m = _shape_mask(shape, cy, cx, r, float(rng.uniform(-0.4, 0.4)), (h, w))
            after = [v & ~m for v in visible]
            area = int(m.sum())
            if area >= 0.5 * np.pi * r * r and all(
                v.sum() >= max(0.4 * a, 24) for v, a in zip(after, areas, strict=True)
            ):
                visible = [*after, m]
                areas.append(area)
                meta.append((size, colour, shape, (cy, cx, r)))
                break
    for m, (_, colour, _, _) in zip(visible, meta, strict=True):
        shade = rng.uniform(0.85, 1.1)
        img[m] = np.asarray(_COLOURS[colour], dtype=np.float64) * shade + rng.normal(
            0, 6, (int(m.sum()), 3)
        )
    image = np.clip(img, 0, 255).round().astype(np.uint8)

    # Mention objects in palette order (colours are unique per image): the order of masks
    # and labels. A reader then only has to know which colours are present, not compare
    # positions, to know which object comes next.
    rank = {c: i for i, c in enumerate(_COLOURS)}
    order = sorted(range(len(visible)), key=lambda k: rank[meta[k][1]])
    labels, mentions = [], []
    for k in order:
        size, colour, shape, _ = meta[k]
        label = _label(size, colour, shape)
        labels.append(label)
        mentions.append(f"{label} {_position_words(visible[k])}")
    listed = (
        mentions[0] if len(mentions) == 1 else ", ".join(mentions[:-1]) + " and " + mentions[-1]
    )
    intro = _INTROS[int(rng.integers(len(_INTROS)))]
    caption = f"{intro} {listed}, on a {bg_kind} background."
    return Scene(image=image, masks=[visible[k] for k in order], labels=labels, caption=caption)


def _image_id(rng: np.random.Generator, split: str, taken: set[str]) -> str:
    """One id draw from ``rng``; a clash with ``taken`` moves to the next free number
    without drawing again, so the scene that follows never depends on other images."""
    number = _ID_RANGES.get(split, _OTHER_SPLITS_BASE) + int(rng.integers(0, 30_000_000))
    while f"sa_{number}" in taken:
        number += 1
    return f"sa_{number}"


def scene_at(
    *,
    seed: int,
    split: str,
    index: int,
    image_size_range: tuple[int, int] = (320, 1024),
    objects_range: tuple[int, int] = (1, 8),
) -> tuple[str, Scene]:
    """Image ``index`` of a split exactly as :func:`write_synthetic_split` draws it, in memory.

    Returns:
        (image id before any clash fix-up, scene). The written split moves an id
        that clashes with an earlier image's to the next free number (rare); the
        scene is the same either way.
    """
    rng = np.random.default_rng([seed, _split_key(split), index])
    image_id = _image_id(rng, split, set())
    return image_id, render_scene(rng, size_range=image_size_range, objects_range=objects_range)


# Older private names, still used by altp/train/samples.py.
_Scene = Scene
_render_scene = render_scene


def write_synthetic_split(
    out_dir: Path,
    *,
    split: str,
    n_images: int,
    seed: int,
    image_size_range: tuple[int, int] = (320, 1024),
    objects_range: tuple[int, int] = (1, 8),
) -> Path:
    """Write a synthetic GCG split in GranD-f's format and return its annotation dir.

    Args:
        out_dir: root; gets ``annotations/`` (returned) and ``images/``. Several
            splits may share one root (ids of val, test and other splits are disjoint).
        split: split name, e.g. "val", "test", "train".
        n_images: number of images, >= 1.
        seed: generator seed; the same (seed, split) writes identical bytes.
        image_size_range: inclusive (min, max) pixels for each side, drawn
            independently for height and width (non-square images).
        objects_range: inclusive (min, max) objects per image.

    Returns:
        The directory holding ``{split}_gcg_coco_{caption,mask}_gt.json``.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if not split or not split.isidentifier():
        raise ValueError(f"split must be a plain name like 'val' or 'test', got {split!r}")
    lo, hi = image_size_range
    if not 64 <= lo <= hi:
        raise ValueError(f"image_size_range must satisfy 64 <= min <= max, got {image_size_range}")
    if not 1 <= objects_range[0] <= objects_range[1] <= len(_COLOURS):
        raise ValueError(
            f"objects_range must satisfy 1 <= min <= max <= {len(_COLOURS)} (one colour per object), "
            f"got {objects_range}"
        )
    out_dir = Path(out_dir)
    gt_dir, image_dir = out_dir / "annotations", out_dir / "images"
    gt_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)

    images: list[dict] = []
    captions: list[dict] = []
    masks: list[dict] = []
    taken: set[str] = set()
    for index in range(n_images):
        rng = np.random.default_rng([seed, _split_key(split), index])
        image_id = _image_id(rng, split, taken)
        taken.add(image_id)
        scene = render_scene(rng, size_range=(lo, hi), objects_range=objects_range)
        height, width = scene.image.shape[:2]
        Image.fromarray(scene.image).save(
            image_dir / f"{image_id}.jpg", format="JPEG", quality=JPEG_QUALITY, subsampling=2
        )
        images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "height": height, "width": width}
        )
        captions.append(
            {
                "id": index + 1,
                "image_id": image_id,
                "caption": scene.caption,
                "labels": scene.labels,
            }
        )
        for mask in scene.masks:
            rle = encode_mask(mask)
            masks.append(
                {
                    "id": len(masks) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    _dump(caption_gt_path(gt_dir, split), {"images": images, "annotations": captions})
    _dump(
        mask_gt_path(gt_dir, split),
        {"images": images, "annotations": masks, "categories": [{"id": 1, "name": "object"}]},
    )
    return gt_dir


def _dump(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")), encoding="utf-8")
