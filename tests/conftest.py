"""Shared fixtures: hand-built GCG splits and one METEOR process per session."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the whole suite: the tiny test models are dominated by
    per-op threading overhead, which a second thread only adds to on 2 cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ROOT = Path(__file__).resolve().parents[1]


def _missing_weights(needed: Sequence[str]) -> list[str]:
    """What a ``weights`` marker names that is not here: paths (relative to the repo root,
    or absolute) and ``hf:<repo id>`` entries of the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    missing = []
    for item in needed:
        if item.startswith("hf:"):
            if not isinstance(try_to_load_from_cache(item[3:], "config.json"), str):
                missing.append(f"{item[3:]} in the Hugging Face cache")
        elif not (ROOT / item).exists():
            missing.append(item)
    return missing


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``gpu`` tests without CUDA and ``weights(...)`` tests without the named weights, with a reason."""
    weights = item.get_closest_marker("weights")
    if weights is not None:
        missing = _missing_weights(weights.args)
        if missing:
            pytest.skip(f"needs real weights: {', '.join(missing)} (see the README's Weights and data)")
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")


def rle_of(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE with str counts of an (H, W) 0/1 mask (test helper)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": rle["counts"].decode("ascii"),
    }


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """(H, W) bool mask with rows y0:y1, columns x0:x1 set."""
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def write_gcg_split(
    gt_dir: Path,
    split: str,
    images: Sequence[dict[str, Any]],
) -> Path:
    """Write ``{split}_gcg_coco_{caption,mask}_gt.json`` by hand.

    Each image dict: ``id``, ``height``, ``width``, ``caption``, ``labels``
    (list), ``masks`` (list of (H, W) arrays, i-th pairs with i-th label).
    Image order is the list order.
    """
    gt_dir.mkdir(parents=True, exist_ok=True)
    imgs, caps, anns = [], [], []
    for k, im in enumerate(images):
        entry = {
            "id": im["id"],
            "file_name": f"{im['id']}.jpg",
            "height": im["height"],
            "width": im["width"],
        }
        imgs.append(entry)
        caps.append(
            {
                "id": k + 1,
                "image_id": im["id"],
                "caption": im["caption"],
                "labels": list(im["labels"]),
            }
        )
        for m in im["masks"]:
            rle = rle_of(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": im["id"],
                    "category_id": 1,
                    "segmentation": rle,
                    "area": float(np.asarray(m).sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    (gt_dir / f"{split}_gcg_coco_caption_gt.json").write_text(
        json.dumps({"images": imgs, "annotations": caps})
    )
    (gt_dir / f"{split}_gcg_coco_mask_gt.json").write_text(
        json.dumps(
            {"images": imgs, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
        )
    )
    return gt_dir


@pytest.fixture
def gcg_split_writer() -> Callable[..., Path]:
    return write_gcg_split


@pytest.fixture(scope="session")
def meteor() -> Iterator[Any]:
    """One METEOR Java process for the whole session (its start costs seconds)."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    yield scorer
    del scorer


@pytest.fixture(scope="session")
def minilm_encoder() -> Any:
    """The packaged all-MiniLM-L6-v2 as a :class:`eval.text_encoders.TextEncoder`, loaded once."""
    from eval.text_encoders import TextEncoder

    return TextEncoder(name="minilm")
