"""OMG-LLaVA's GCG answer -> (caption, phrases), exactly as ``process_and_save_output``.

From ``omg_llava/tools/gcg_omg_seg_llava.py``. The decoded text (special tokens
kept) goes through, in this order:

1. remove ``<s>``, remove ``\\n`` (no space inserted), replace each
   non-overlapping ``"  "`` by ``" "`` once (``str.replace``, not a collapse);
2. keep what follows the last ``"ASSISTANT: "`` (never present with the
   InternLM2 template, kept for fidelity);
3. phrases: every ``<p>(.*?)</p>`` match, stripped;
4. caption: every ``<...>`` removed (non-greedy, so ``<p>``, ``</p>``,
   ``<|im_end|>``, ``</s>``), then ``[SEG]`` removed, whitespace collapsed,
   ``strip("'")``, ``strip()``.

The differences from GLaMM's parser (newlines deleted rather than turned into
spaces, a single-pass double-space replace, the ``'`` strip) change the caption
text METEOR and CIDEr see, so OMG-LLaVA runs must use this one.
"""

from __future__ import annotations

import re

__all__ = ["parse_gcg_text"]

_PHRASE = re.compile(r"<p>(.*?)</p>")
_TAG = re.compile(r"<.*?>")


def parse_gcg_text(decoded: str) -> tuple[str, list[str]]:
    """Return ``(caption, phrases)`` from the decoded generation (special tokens kept)."""
    text = decoded.replace("<s>", "").replace("\n", "").replace("  ", " ")
    text = text.split("ASSISTANT: ")[-1]
    phrases = [p.strip() for p in _PHRASE.findall(text)]
    caption = _TAG.sub("", text).replace("[SEG]", "")
    caption = " ".join(caption.split()).strip("'").strip()
    return caption, phrases
