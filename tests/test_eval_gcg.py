"""End-to-end GCG evaluation on a hand-built split (minilm encoder, one shared METEOR)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altp.data.predictions import PredictionFormatError, write_prediction
from eval.gcg import evaluate, format_table, main
from eval.text_encoders import TextEncoder, TextEncoderUnavailable
from tests.conftest import box, write_gcg_split

H, W = 10, 12
SQUARE, CIRCLE, BAR = box(H, W, 0, 4, 0, 4), box(H, W, 5, 9, 6, 11), box(H, W, 8, 10, 0, 12)
IMAGES = [
    # Caption-file order (not sorted): b, a, c.
    {"id": "sa_b", "height": H, "width": W, "caption": "A red square next to a blue circle.",
     "labels": ["A red square", "a blue circle"], "masks": [SQUARE, CIRCLE]},
    {"id": "sa_a", "height": H, "width": W, "caption": "A green bar.", "labels": ["A green bar"], "masks": [BAR]},
    {"id": "sa_c", "height": H, "width": W, "caption": "A small red square.", "labels": ["A small red square"], "masks": [SQUARE]},
]  # fmt: skip


def _write_preds(pred_dir: Path, order: list[str]) -> None:
    records = {
        "sa_b": dict(
            caption="A red square and a blue circle.",
            phrases=["A red square", "a blue circle"],
            masks=[SQUARE, CIRCLE],
        ),
        "sa_c": dict(caption="", phrases=[], masks=[]),  # an empty prediction
    }  # sa_a has no file: a missing prediction
    for image_id in order:
        write_prediction(pred_dir, image_id=image_id, **records[image_id])


@pytest.fixture(scope="module")
def scored(
    tmp_path_factory: pytest.TempPathFactory, meteor: Any, minilm_encoder: TextEncoder
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("gcg")
    gt = write_gcg_split(root / "gt", "val", IMAGES)
    _write_preds(root / "pred", ["sa_b", "sa_c"])
    _write_preds(root / "pred_shuffled", ["sa_c", "sa_b"])
    kw = dict(gt_dir=gt, split="val", text_encoder=minilm_encoder, meteor=meteor)
    return {
        "root": root,
        "gt": gt,
        "full": evaluate(pred_dir=root / "pred", **kw),
        "shuffled": evaluate(pred_dir=root / "pred_shuffled", **kw),
        "subset": evaluate(pred_dir=root / "pred", image_ids=["sa_b"], **kw),
    }


def test_hand_computed_mask_metrics(scored: dict[str, Any]) -> None:
    m = scored["full"]
    assert m["n_images"] == 3 and m["text_encoder"] == "minilm"
    # Per-image greedy mIoU: sa_b 1.0, sa_a (missing) 0.0, sa_c (empty) 0.0.
    assert m["miou"] == pytest.approx(1 / 3, abs=1e-15)
    # 4 GT objects, 2 true positives and no false positive: precision 1 up to recall 1/2.
    assert m["ap50"] == pytest.approx(51 / 101, abs=1e-12)
    # sa_b's identical phrases match; 2 of the 4 GT labels.
    assert (m["recall_hits"], m["recall_gt_phrases"], m["recall"]) == (2, 4, 0.5)
    assert m["recall_failed_images"] == []
    assert m["missing_predictions"] == ["sa_a"]
    assert set(m) >= {"meteor", "cider", "ap50", "miou", "recall"}
    assert "| METEOR | CIDER | AP50 | mIoU | RECALL |" in format_table(m)


def test_order_of_files_on_disk_changes_nothing(scored: dict[str, Any]) -> None:
    assert scored["shuffled"] == scored["full"]


def test_subset_scores_only_those_images(scored: dict[str, Any]) -> None:
    m = scored["subset"]
    assert m["n_images"] == 1 and m["missing_predictions"] == []
    assert (m["miou"], m["recall"]) == (1.0, 1.0)
    assert m["ap50"] == pytest.approx(1.0, abs=1e-12)


def test_prediction_with_wrong_mask_size_is_refused(
    scored: dict[str, Any], tmp_path: Path, meteor: Any, minilm_encoder: TextEncoder
) -> None:
    shutil.copytree(scored["root"] / "pred", tmp_path / "pred")
    write_prediction(
        tmp_path / "pred",
        image_id="sa_c",
        caption="x",
        phrases=["x"],
        masks=[np.ones((3, 3), bool)],
    )
    with pytest.raises(
        PredictionFormatError, match=r"sa_c.json: mask size \[3, 3\] != image size \[10, 12\]"
    ):
        evaluate(
            pred_dir=tmp_path / "pred",
            gt_dir=scored["gt"],
            split="val",
            text_encoder=minilm_encoder,
            meteor=meteor,
        )


def test_corrupt_prediction_is_a_clear_error(
    scored: dict[str, Any], tmp_path: Path, meteor: Any, minilm_encoder: TextEncoder
) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "sa_b.json").write_text("{not json")
    with pytest.raises(PredictionFormatError, match="sa_b.json: corrupt JSON"):
        evaluate(
            pred_dir=tmp_path / "pred",
            gt_dir=scored["gt"],
            split="val",
            text_encoder=minilm_encoder,
            meteor=meteor,
        )


def test_cli_error_is_one_line(
    scored: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["--pred-dir", str(scored["root"] / "pred"), "--gt-dir", str(scored["gt"]), "--split", "val",
               "--text-encoder", str(tmp_path / "nope")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "neither 'bert-base-uncased', 'minilm'" in err


def test_missing_bert_says_how_to_get_it() -> None:
    try:
        TextEncoder(name="bert-base-uncased")
    except TextEncoderUnavailable as e:
        assert "hf download bert-base-uncased" in str(e) and "\n" not in str(e)
    else:
        pytest.skip("bert-base-uncased is in the local HF cache here")


def test_cli_prints_table_and_writes_json(
    scored: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import eval.gcg as gcg

    seen: dict[str, Any] = {}

    def fake_evaluate(**kw: Any) -> dict[str, Any]:
        seen.update(kw)
        return scored["full"]  # the scoring itself is tested above; this is the CLI plumbing

    monkeypatch.setattr(gcg, "evaluate", fake_evaluate)
    out = tmp_path / "sub" / "m.json"
    rc = main(
        [
            "--pred-dir",
            "P",
            "--gt-dir",
            "G",
            "--split",
            "test",
            "--text-encoder",
            "minilm",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    assert seen == {
        "pred_dir": Path("P"),
        "gt_dir": Path("G"),
        "split": "test",
        "text_encoder": "minilm",
    }
    assert json.loads(out.read_text()) == scored["full"]
    assert "| 50.0 |" in capsys.readouterr().out  # recall 0.5 shown x100
