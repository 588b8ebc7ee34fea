"""METEOR/CIDEr equal pycocoevalcap called the way COCOEvalCap calls it (SPICE aside)."""

from __future__ import annotations

from typing import Any

import pytest
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from eval.captions import caption_scores, tokenize

REFS = {
    "sa_2": "A man in a red shirt rides a brown horse.",
    "sa_1": "Two dogs play on the green grass, near a fence.",
    "sa_3": "A plate with a sandwich and fries.",
}
HYPS = {
    "sa_2": "A man rides a horse.",
    "sa_1": "Two dogs are playing on grass!",
    "sa_3": "A sandwich on a white plate with french fries.",
}


def _direct(ids: list[str], meteor: Any) -> tuple[float, float]:
    # What COCOEvalCap.evaluate() does: two tokenizer runs, then each scorer.
    gts = PTBTokenizer().tokenize({i: [{"caption": REFS[i]}] for i in ids})
    res = PTBTokenizer().tokenize({i: [{"caption": HYPS[i]}] for i in ids})
    return meteor.compute_score(gts, res)[0], Cider().compute_score(gts, res)[0]


def test_tokenize_is_ptb_lowercase_without_punctuation() -> None:
    assert tokenize({"a": "Hello, World!", "b": "", "c": "It's a dog."}) == {
        "a": "hello world",
        "b": "",
        "c": "it 's a dog",
    }


def test_scores_equal_direct_pycocoevalcap(meteor: Any) -> None:
    ids = ["sa_2", "sa_1", "sa_3"]
    got = caption_scores(image_ids=ids, references=REFS, hypotheses=HYPS, meteor=meteor)
    assert got == _direct(ids, meteor)
    # CIDEr's document frequencies come from the scored set: a subset scores differently.
    sub = caption_scores(
        image_ids=["sa_2", "sa_1"], references=REFS, hypotheses=HYPS, meteor=meteor
    )
    assert sub == _direct(["sa_2", "sa_1"], meteor)
    assert sub[1] != pytest.approx(got[1])


def test_identical_captions_give_meteor_one(meteor: Any) -> None:
    m, _ = caption_scores(image_ids=["sa_2"], references=REFS, hypotheses=REFS, meteor=meteor)
    assert m == pytest.approx(1.0, abs=1e-3)
