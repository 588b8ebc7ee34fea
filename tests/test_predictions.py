"""GLaMM-format prediction files: encoding, deterministic atomic writes, tolerant reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from altp.data.predictions import (
    PredictionFormatError,
    decode_mask,
    encode_mask,
    read_prediction,
    write_prediction,
)


def _masks() -> list[np.ndarray]:
    a = np.zeros((5, 7), dtype=bool)
    a[1:3, 2:6] = True
    b = np.zeros((5, 7), dtype=bool)
    b[4, 0] = True
    return [a, b]


def test_encode_mask_is_pycocotools_rle_with_str_counts() -> None:
    mask = _masks()[0]
    rle = encode_mask(mask)
    assert rle["size"] == [5, 7]
    assert isinstance(rle["counts"], str)
    # Column-major runs: 2 columns of 5 zeros (10), then per column 1 zero, 2 ones, 2 zeros...
    direct = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle["counts"].encode() == direct["counts"]
    assert mask_utils.area(direct) == 8
    np.testing.assert_array_equal(decode_mask(rle), mask)


def test_encode_mask_rejects_non_binary_and_stacks() -> None:
    with pytest.raises(ValueError, match="binary"):
        encode_mask(np.full((2, 2), 0.7))
    with pytest.raises(ValueError, match="one \\(H, W\\) mask"):
        encode_mask(np.zeros((2, 3, 3), dtype=bool))


def test_write_is_deterministic_ordered_and_atomic(tmp_path: Path) -> None:
    kwargs = dict(
        image_id="sa_1", caption="A cat on a mat.", phrases=["A cat", "a mat"], masks=_masks()
    )
    p1 = write_prediction(tmp_path / "a", **kwargs, extra={"z": 1, "tokens_kept": 57})
    p2 = write_prediction(tmp_path / "b", **kwargs, extra={"tokens_kept": 57, "z": 1})
    assert p1.read_bytes() == p2.read_bytes()
    assert p1.name == "sa_1.json"
    keys = list(json.loads(p1.read_text()))
    assert keys == ["image_id", "caption", "phrases", "pred_masks", "tokens_kept", "z"]
    assert sorted(x.name for x in (tmp_path / "a").iterdir()) == ["sa_1.json"]  # no temp file left
    # Overwrite in place keeps one file.
    write_prediction(tmp_path / "a", **kwargs)
    assert [x.name for x in (tmp_path / "a").iterdir()] == ["sa_1.json"]


def test_write_rejects_extra_shadowing_official_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="official keys"):
        write_prediction(
            tmp_path, image_id="x", caption="", phrases=[], masks=[], extra={"caption": "y"}
        )


def test_round_trip(tmp_path: Path) -> None:
    masks = _masks()
    path = write_prediction(tmp_path, image_id="sa_2", caption="c", phrases=["p", "q"], masks=masks)
    pred = read_prediction(path)
    assert pred["image_id"] == "sa_2" and pred["phrases"] == ["p", "q"]
    for rle, m in zip(pred["pred_masks"], masks, strict=True):
        np.testing.assert_array_equal(decode_mask(rle), m)


def test_reads_official_glamm_and_wrapped_files(tmp_path: Path) -> None:
    rle = encode_mask(_masks()[0])
    flat = {"image_id": "sa_3", "caption": "c", "phrases": ["p"], "pred_masks": [rle]}
    (tmp_path / "flat.json").write_text(json.dumps(flat))  # json.dump defaults, as infer.py writes
    assert read_prediction(tmp_path / "flat.json")["pred_masks"] == [rle]
    # The official loader also unwraps {image_id: {...}} (first value is the record).
    (tmp_path / "wrapped.json").write_text(
        json.dumps({"sa_3": {"caption": "c", "phrases": ["p"], "pred_masks": [rle]}})
    )
    wrapped = read_prediction(tmp_path / "wrapped.json")
    assert wrapped["image_id"] == "sa_3" and wrapped["caption"] == "c"


def test_corrupt_json_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "sa_4.json"
    bad.write_text('{"image_id": "sa_4", "caption": ')
    with pytest.raises(PredictionFormatError, match="sa_4.json: corrupt JSON"):
        read_prediction(bad)


def test_missing_key_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "sa_5.json"
    bad.write_text(json.dumps({"image_id": "sa_5", "caption": "c", "phrases": []}))
    with pytest.raises(PredictionFormatError, match="pred_masks"):
        read_prediction(bad)
