"""Caption metrics of the GCG protocol: METEOR and CIDEr from pycocoevalcap 1.2.

The official script calls ``COCOEvalCap.evaluate()``, which tokenizes with
``PTBTokenizer`` and runs BLEU, METEOR, ROUGE-L, CIDEr and SPICE. SPICE
downloads Stanford models and fails offline, so this module calls the same
tokenizer and the two reported scorers directly, with the same inputs: one
reference per image, images in caption-GT order. METEOR is the corpus score
the METEOR process returns (not a mean of per-image scores); CIDEr's document
frequencies come from the references of the images being scored.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

__all__ = ["tokenize", "tokenize_pairs", "meteor_score", "cider_score", "caption_scores"]

_Key = TypeVar("_Key", bound=Hashable)


def tokenize(texts: dict[_Key, str]) -> dict[_Key, str]:
    """PTB-tokenize (lower-case, punctuation dropped) in one Java run.

    Empty strings are not sent: ``PTBTokenizer`` pairs output lines with keys
    by position, and a trailing empty line would shift or drop keys. PTB turns
    an empty line into an empty line, so they map to ``""`` directly.
    """
    nonempty = {k: [{"caption": v}] for k, v in texts.items() if v.strip()}
    tokens = PTBTokenizer().tokenize(nonempty) if nonempty else {}
    return {k: tokens[k][0] if k in tokens else "" for k in texts}


def caption_scores(
    *,
    image_ids: Sequence[str],
    references: dict[str, str],
    hypotheses: dict[str, str],
    meteor: Meteor | None = None,
) -> tuple[float, float]:
    """Corpus METEOR and CIDEr over ``image_ids``.

    Args:
        image_ids: the scored images, caption-GT order.
        references: ``image_id -> GT caption`` (one per image, as GranD-f).
        hypotheses: ``image_id -> predicted caption``.
        meteor: a running :class:`Meteor` to reuse (one Java process for a
            whole session); a fresh one is started and stopped otherwise.

    Returns:
        ``(meteor, cider)`` as fractions.
    """
    gts, res = tokenize_pairs(image_ids=image_ids, references=references, hypotheses=hypotheses)
    own = meteor is None
    scorer = Meteor() if own else meteor
    try:
        meteor_value = meteor_score(gts, res, meteor=scorer)
    finally:
        if own:
            del scorer
    return meteor_value, cider_score(gts, res)


Tokens = dict[str, list[str]]


def tokenize_pairs(
    *, image_ids: Sequence[str], references: dict[str, str], hypotheses: dict[str, str]
) -> tuple[Tokens, Tokens]:
    """PTB-tokenized ``(gts, res)`` dicts, ``image_id -> [one string]``, in ``image_ids`` order."""
    if not image_ids:
        raise ValueError("caption metrics need at least one image")
    # Gts and hypotheses share one tokenizer run; keys keep them apart.
    joint = {("gt", i): references[i] for i in image_ids} | {
        ("res", i): hypotheses[i] for i in image_ids
    }
    tokens = tokenize(joint)
    gts = {i: [tokens[("gt", i)]] for i in image_ids}
    res = {i: [tokens[("res", i)]] for i in image_ids}
    return gts, res


def meteor_score(gts: Tokens, res: Tokens, *, meteor: Meteor) -> float:
    """Corpus METEOR of tokenized captions from a running METEOR process."""
    return float(meteor.compute_score(gts, res)[0])


def cider_score(gts: Tokens, res: Tokens) -> float:
    """CIDEr-D as pycocoevalcap computes it (document frequencies from ``gts``)."""
    return float(Cider().compute_score(gts, res)[0])
